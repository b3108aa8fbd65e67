//! Shrinking an encrypted image inside a cluster needs the password: the cut part of
//! the cluster is overwritten with encrypted zeros, so growing the image again shows
//! zeros there (as QEMU decrypts it), never the old data.

mod common;

use common::*;

#[test]
fn shrink_inside_a_cluster_needs_the_key_and_clears_the_cut() {
    let dir = tmp();
    let d = dir.path();
    let pw = d.join("pw");
    write(&pw, b"cut secret");
    let img = d.join("enc.qcow");
    let o = qcow(&[
        &"create",
        &"--encrypt",
        &"--password-file",
        &pw,
        &img,
        &"1M",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut rng = Rng::new(3);
    let data = rng.bytes(1 << 20);
    let input = d.join("in");
    write(&input, &data);
    let o = qcow_stdin_file(&[&"write", &"--password-file", &pw, &img, &"0"], &input);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let before = read(&img);

    let o = qcow(&[&"resize", &"--shrink", &img, &"1000"]);
    assert_fails(&o, 1, "shrink inside a cluster without the password");
    assert!(o.stderr.contains("--password-file"), "{}", o.stderr);
    assert_eq!(read(&img), before, "a refused resize changes nothing");

    qcow_ok(&[
        &"resize",
        &"--shrink",
        &"--password-file",
        &pw,
        &img,
        &"1000",
    ]);
    qcow_ok(&[&"resize", &img, &"1M"]);
    let secret = format!("secret,id=s0,file={}", pw.display());
    let opts = format!(
        "driver=qcow,file.filename={},encrypt.key-secret=s0",
        img.display()
    );
    let out = d.join("out.raw");
    qemu_img_ok(&[
        &"convert",
        &"--object",
        &secret,
        &"--image-opts",
        &opts,
        &"-O",
        &"raw",
        &out,
    ]);
    let mut want = data[..1024].to_vec();
    want.resize(1 << 20, 0);
    assert_bytes_eq(&read(&out), &want, "grown again after the cut");
    assert_eq!(qcow(&[&"check", &img]).code, 0);
}
