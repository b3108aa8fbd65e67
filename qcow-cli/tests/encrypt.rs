//! Issue 5, encryption, checked with QEMU: images QEMU encrypted (secrets of 1, 16,
//! 20 bytes and one ending in a newline) read as QEMU decrypts them; what we create,
//! write and convert encrypted QEMU decrypts to exactly our model; without a password
//! reading fails and `info` works; secrets QEMU refuses (not UTF-8, a NUL) we refuse;
//! `compare --password-file`.

mod common;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use common::*;

fn qemu_create(img: &Path, pw: &Path, size: &str) -> OutOrPanic {
    let o = qemu_img(&[
        &"create",
        &"-f",
        &"qcow",
        &"--object",
        &secret_object(pw),
        &"-o",
        &"encrypt.format=aes,encrypt.key-secret=s0",
        &img,
        &size,
    ]);
    OutOrPanic(o)
}

struct OutOrPanic(Out);

impl OutOrPanic {
    fn ok(self) {
        assert_eq!(self.0.code, 0, "qemu-img create: {}", self.0.stderr);
    }
}

/// Asserts QEMU decrypts `img` with `pw` to exactly `model` (a raw file).
fn assert_qemu_decrypts_to(img: &Path, pw: &Path, model: &Path, what: &str) {
    let obj = secret_object(pw);
    let m = format!("driver=raw,file.filename={}", model.display());
    let (code, text) = qemu_compare(&m, &image_opts(img), &[&"--object", &obj, &"--image-opts"]);
    assert_eq!(code, 0, "{what}: qemu-img compare with the model: {text}");
}

/// `qemu-img map --output=json` of an encrypted image.
fn qemu_map(img: &Path, pw: &Path) -> Vec<MapExtent> {
    parse_map(&qemu_img_ok(&[
        &"map",
        &"--output=json",
        &"--object",
        &secret_object(pw),
        &"--image-opts",
        &image_opts(img),
    ]))
}

fn secrets(d: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let list: Vec<(&str, Vec<u8>)> = vec![
        ("one", b"k".to_vec()),
        ("sixteen", b"0123456789abcdef".to_vec()),
        ("twenty", b"twenty-byte-secret!!".to_vec()),
        ("newline", b"secret\n".to_vec()),
    ];
    list.into_iter()
        .map(|(n, s)| {
            let p = d.join(format!("pw-{n}"));
            write(&p, &s);
            (p, s)
        })
        .collect()
}

#[test]
fn images_qemu_encrypted_read_as_qemu_decrypts_them() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(31);
    let rnd = d.join("random.bin");
    write(&rnd, &rng.bytes(1 << 20));
    for (pw, secret) in secrets(d) {
        let what = format!("secret {:?}", String::from_utf8_lossy(&secret));
        let img = d.join("enc.qcow");
        qemu_create(&img, &pw, "3000000").ok();
        let size = 3000000u64.div_ceil(512) * 512;
        qemu_io_enc(
            &img,
            &pw,
            &[
                "write -P 0x11 0 4096".into(),
                "write -P 0x22 5001 7003".into(),
                format!("write -s {} 1000003 300001", rnd.display()),
                "write -z 1100000 5000".into(),
                "write -P 0x33 2097151 3".into(),
                format!("write -P 0x77 {} 513", size - 513),
            ],
        );
        let want = qemu_decrypted(&img, &pw, d);
        assert_eq!(want.len() as u64, size);
        assert!(
            want[..4096].iter().all(|&b| b == 0x11),
            "{what}: QEMU's view"
        );
        check_reads(&img, None, &want, Some(&pw), &mut rng, &what);

        // The key is the secret's first 16 bytes, zero-padded; nothing is stripped.
        let other = d.join("pw-other");
        let key_bytes: Vec<u8> = if secret.len() > 16 {
            secret[..16].to_vec()
        } else if secret.ends_with(b"\n") {
            secret[..secret.len() - 1].to_vec()
        } else {
            let mut s = secret.clone();
            *s.last_mut().expect("non-empty") ^= 1;
            s
        };
        write(&other, &key_bytes);
        let got = qcow_ok(&[&"read", &"--password-file", &other, &img, &"0", &"4096"]);
        if secret.len() > 16 {
            assert!(
                got == want[..4096],
                "{what}: only 16 bytes of the secret count"
            );
        } else {
            assert!(got != want[..4096], "{what}: another secret decrypts alike");
        }

        // Without a password: info works, reading does not.
        let human = String::from_utf8_lossy(&qcow_ok(&[&"info", &img])).into_owned();
        assert!(human.contains("encrypted: yes"), "{human}");
        let j = Json::parse(&String::from_utf8_lossy(&qcow_ok(&[
            &"info",
            &"--output=json",
            &img,
        ])));
        assert_eq!(j.get("encrypted"), Some(&Json::Bool(true)));
        let q = Json::parse(&qemu_img_ok(&[&"info", &"--output=json", &img]));
        assert_eq!(q.get("encrypted"), Some(&Json::Bool(true)));
        for key in [
            "filename",
            "format",
            "virtual-size",
            "actual-size",
            "cluster-size",
            "backing-filename",
        ] {
            assert_eq!(j.get(key), q.get(key), "{what}: info key {key}");
        }
        let line = qcow_err(&[&"read", &img, &"0", &"512"], 1);
        assert!(line.contains("password"), "{line}");
        let out = d.join("out.raw");
        qcow_err(&[&"convert", &"-O", &"raw", &img, &out], 1);
        // map needs no key (QEMU's needs one to open the image): the same extents.
        let ours = parse_map(&String::from_utf8_lossy(&qcow_ok(&[
            &"map",
            &"--output=json",
            &img,
        ])));
        assert_eq!(ours, qemu_map(&img, &pw), "{what}: map");
        assert!(ours.iter().any(|e| e.data));
    }
}

fn write_args(img: &Path, pw: &Path, at: u64) -> Vec<OsString> {
    vec![
        "write".into(),
        "--password-file".into(),
        pw.into(),
        img.into(),
        at.to_string().into(),
    ]
}

fn qcow_write(img: &Path, pw: &Path, at: u64, data: &[u8]) {
    let a = write_args(img, pw, at);
    let refs: Vec<&dyn AsRef<OsStr>> = a.iter().map(|x| x as &dyn AsRef<OsStr>).collect();
    let o = qcow_stdin(&refs, data);
    assert_eq!(o.code, 0, "write at {at}: {}", o.stderr);
}

#[test]
fn what_we_encrypt_qemu_decrypts() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(32);
    let secrets = secrets(d);
    let (pw, _) = &secrets[3];
    let (pw2, _) = &secrets[2];
    let size = 2u64 << 20;

    // Our create is QEMU's, byte for byte.
    let ours = d.join("ours.qcow");
    let o = qcow(&[
        &"create",
        &"--encrypt",
        &"--password-file",
        pw,
        &ours,
        &size.to_string(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let theirs = d.join("theirs.qcow");
    qemu_create(&theirs, pw, &size.to_string()).ok();
    assert_bytes_eq(&read(&ours), &read(&theirs), "encrypted create");
    let q = Json::parse(&qemu_img_ok(&[&"info", &"--output=json", &ours]));
    assert_eq!(q.get("encrypted"), Some(&Json::Bool(true)));
    assert!(qemu_img_ok(&[&"info", &ours]).contains("encrypted: yes"));

    // Random writes at odd offsets and lengths, checked by QEMU every 50.
    let model_path = d.join("model.raw");
    let mut model = vec![0u8; size as usize];
    for i in 1..=150 {
        let len = match rng.below(4) {
            0 => 1 + rng.below(600),
            1 => 1 + rng.below(5000),
            2 => 1 + rng.below(70000),
            _ => 4096 * (1 + rng.below(4)),
        };
        let at = if i % 25 == 0 {
            size - len
        } else {
            rng.below(size - len)
        };
        let data = if rng.below(4) == 0 {
            vec![0u8; len as usize]
        } else {
            rng.bytes(len as usize)
        };
        qcow_write(&ours, pw, at, &data);
        model[at as usize..(at + len) as usize].copy_from_slice(&data);
        if i % 50 == 0 {
            write(&model_path, &model);
            assert_qemu_decrypts_to(&ours, pw, &model_path, &format!("after {i} writes"));
        }
    }
    let mut r2 = Rng::new(99);
    check_reads(
        &ours,
        None,
        &model,
        Some(pw),
        &mut r2,
        "our encrypted image",
    );

    // convert: encrypted -> encrypted with another secret, plain -> encrypted,
    // and -c (encrypted clusters are never compressed).
    let conv = d.join("conv.qcow");
    let o = qcow(&[
        &"convert",
        &"-O",
        &"qcow",
        &"--password-file",
        pw,
        &"--encrypt",
        &"--target-password-file",
        pw2,
        &ours,
        &conv,
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_qemu_decrypts_to(&conv, pw2, &model_path, "converted with a new secret");
    for (flag, name) in [(None, "fromraw.qcow"), (Some("-c"), "fromraw-c.qcow")] {
        let out = d.join(name);
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"convert", &"-O", &"qcow"];
        if let Some(f) = &flag {
            args.push(f);
        }
        args.extend_from_slice(&[
            &"--encrypt",
            &"--target-password-file",
            pw,
            &model_path,
            &out,
        ]);
        let o = qcow(&args);
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_qemu_decrypts_to(&out, pw, &model_path, &format!("raw -> encrypted {flag:?}"));
        let m = qemu_map(&out, pw);
        assert!(m.iter().any(|e| e.data), "nothing stored");
    }

    // Writes into an image QEMU created and wrote.
    qemu_io_enc(&theirs, pw, &["write -P 0x5e 1000 9000".into()]);
    let mut model = qemu_decrypted(&theirs, pw, d);
    for _ in 0..20 {
        let len = 1 + rng.below(3000);
        let at = rng.below(size - len);
        let data = rng.bytes(len as usize);
        qcow_write(&theirs, pw, at, &data);
        model[at as usize..(at + len) as usize].copy_from_slice(&data);
    }
    write(&model_path, &model);
    assert_qemu_decrypts_to(&theirs, pw, &model_path, "our writes into QEMU's image");

    // No password: writing fails and leaves the image alone.
    let before = read(&theirs);
    let o = qcow_stdin(&[&"write", &theirs, &"0"], &[1, 2, 3]);
    assert_fails(&o, 1, "write without a password");
    assert!(read(&theirs) == before);
}

#[test]
fn secrets_qemu_refuses_we_refuse() {
    let dir = tmp();
    let d = dir.path();
    let good = d.join("pw-good");
    write(&good, b"good");
    let img = d.join("enc.qcow");
    qemu_create(&img, &good, "1M").ok();
    qemu_io_enc(&img, &good, &["write -P 1 0 4096".into()]);
    for (name, secret) in [
        ("not-utf8", b"\xff\xfeab".to_vec()),
        ("nul", b"abc\0def".to_vec()),
        (
            "latin1",
            "caf\u{e9}"
                .bytes()
                .map(|b| if b >= 0x80 { 0xe9 } else { b })
                .collect(),
        ),
    ] {
        let pw = d.join(format!("pw-{name}"));
        write(&pw, &secret);
        // QEMU refuses them, when creating and when opening.
        let q = d.join(format!("q-{name}.qcow"));
        let o = qemu_create(&q, &pw, "1M").0;
        assert_ne!(o.code, 0, "{name}: qemu-img create accepts it");
        assert!(o.stderr.contains("not valid UTF-8"), "{}", o.stderr);
        let obj = secret_object(&pw);
        let opts = image_opts(&img);
        let o = qemu_img(&[
            &"convert",
            &"--object",
            &obj,
            &"--image-opts",
            &opts,
            &"-O",
            &"raw",
            &d.join("x.raw"),
        ]);
        assert_ne!(o.code, 0, "{name}: qemu opens with it");
        // So do we, with one clear line.
        let ours = d.join(format!("o-{name}.qcow"));
        let line = qcow_err(
            &[
                &"create",
                &"--encrypt",
                &"--password-file",
                &pw,
                &ours,
                &"1M",
            ],
            1,
        );
        assert!(line.contains("UTF-8"), "{line}");
        let line = qcow_err(&[&"read", &"--password-file", &pw, &img, &"0", &"512"], 1);
        assert!(line.contains("UTF-8"), "{line}");
        let out = d.join("out.qcow");
        let line = qcow_err(
            &[
                &"convert",
                &"-O",
                &"qcow",
                &"--password-file",
                &good,
                &"--encrypt",
                &"--target-password-file",
                &pw,
                &img,
                &out,
            ],
            1,
        );
        assert!(line.contains("UTF-8"), "{line}");
        let o = qcow_stdin(&[&"write", &"--password-file", &pw, &img, &"0"], &[1]);
        assert_fails(&o, 1, "write with a refused secret");
    }
    // The image is still QEMU's.
    let want = vec![1u8; 4096];
    assert_eq!(qemu_decrypted(&img, &good, d)[..4096], want[..]);
}

#[test]
fn compare_with_a_password() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(33);
    let pw = d.join("pw");
    write(&pw, b"compare me");
    let model = d.join("model.raw");
    let data = mixed(&mut rng, 1 << 20);
    write(&model, &data);
    let a = d.join("a.qcow");
    let o = qcow(&[
        &"convert",
        &"-O",
        &"qcow",
        &"--encrypt",
        &"--target-password-file",
        &pw,
        &model,
        &a,
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let b = d.join("b.qcow");
    qemu_create(&b, &pw, "1M").ok();
    let raw_model = format!("write -s {} 0 1048576", model.display());
    qemu_io_enc(&b, &pw, &[raw_model]);

    let cmp = |x: &Path, y: &Path| {
        let o = qcow(&[&"compare", &"--password-file", &pw, &x, &y]);
        (o.code, o.text(), o.stderr)
    };
    assert_eq!(cmp(&a, &model).0, 0);
    assert_eq!(cmp(&a, &b).0, 0, "{:?}", cmp(&a, &b));
    assert_eq!(cmp(&b, &model).0, 0);
    qcow_write(&a, &pw, 777_777, &[0xab]);
    let (code, text, _) = cmp(&a, &b);
    assert_eq!(code, 1);
    assert_eq!(
        text,
        format!("Content mismatch at offset {}!\n", 777_777 / 512 * 512)
    );
    // Without the password: an error, exit 2.
    let o = qcow(&[&"compare", &a, &model]);
    assert_fails(&o, 2, "compare without a password");
}

/// An encrypted overlay of a raw file: QEMU's and ours read, write and create alike.
#[test]
fn encrypted_overlay_of_a_raw_file() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(34);
    let pw = d.join("pw");
    write(&pw, b"overlay");
    let base = d.join("base.raw");
    write(&base, &mixed(&mut rng, 2 << 20));
    let before = read(&base);
    let create = |img: &Path| {
        let o = qemu_img(&[
            &"create",
            &"-f",
            &"qcow",
            &"--object",
            &secret_object(&pw),
            &"-o",
            &"encrypt.format=aes,encrypt.key-secret=s0",
            &"-b",
            &"base.raw",
            &"-F",
            &"raw",
            &img,
            &"3M",
        ]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    };
    let theirs = d.join("theirs.qcow");
    create(&theirs);
    let ours = d.join("ours.qcow");
    qcow_ok(&[
        &"create",
        &"--encrypt",
        &"--password-file",
        &pw,
        &"-b",
        &"base.raw",
        &"-F",
        &"raw",
        &ours,
        &"3M",
    ]);
    assert_bytes_eq(&read(&ours), &read(&theirs), "encrypted overlay create");

    qemu_io_enc(
        &theirs,
        &pw,
        &[
            "write -P 0x17 1000 3000".into(),
            "write -z 500000 1000".into(),
            "write -P 0x18 2000000 200000".into(),
        ],
    );
    let want = qemu_decrypted(&theirs, &pw, d);
    check_reads(
        &theirs,
        None,
        &want,
        Some(&pw),
        &mut rng,
        "encrypted overlay",
    );

    let mut model = want;
    for _ in 0..30 {
        let len = 1 + rng.below(9000);
        let at = rng.below(model.len() as u64 - len);
        let data = rng.bytes(len as usize);
        qcow_write(&theirs, &pw, at, &data);
        model[at as usize..(at + len) as usize].copy_from_slice(&data);
    }
    let m = d.join("model.raw");
    write(&m, &model);
    assert_qemu_decrypts_to(&theirs, &pw, &m, "our writes into an encrypted overlay");
    assert!(read(&base) == before, "the backing file was modified");
}

/// QEMU stores compressed clusters of encrypted images unencrypted: they read, map
/// and take partial overwrites (re-encrypted as plain clusters) as QEMU does.
#[test]
fn compressed_clusters_in_an_encrypted_image() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(35);
    let pw = d.join("pw");
    write(&pw, b"squeeze");
    let img = d.join("enc.qcow");
    qemu_create(&img, &pw, "1M").ok();
    let text = d.join("text.bin");
    write(&text, &rng.text(4096));
    qemu_io_enc(
        &img,
        &pw,
        &[
            format!("write -c -s {} 8192 4096", text.display()),
            "write -c -P 0x41 12288 4096".into(),
            "write -c -P 0x42 16384 4096".into(),
            "write -P 9 0 512".into(),
        ],
    );
    let m = qemu_map(&img, &pw);
    assert!(
        m.iter().any(|e| e.compressed),
        "QEMU wrote nothing compressed"
    );
    let ours = parse_map(&String::from_utf8_lossy(&qcow_ok(&[
        &"map",
        &"--output=json",
        &img,
    ])));
    assert_eq!(ours, m);
    let mut model = qemu_decrypted(&img, &pw, d);
    check_reads(
        &img,
        None,
        &model,
        Some(&pw),
        &mut rng,
        "compressed, encrypted",
    );
    let patch_data = rng.bytes(100);
    qcow_write(&img, &pw, 14000, &patch_data);
    model[14000..14100].copy_from_slice(&patch_data);
    let mp = d.join("model.raw");
    write(&mp, &model);
    assert_qemu_decrypts_to(&img, &pw, &mp, "partial overwrite of a compressed cluster");
}

/// Encrypted images of other geometries (created by the library), written by us at
/// odd offsets, decrypted by QEMU.
#[test]
fn encrypted_writes_at_other_geometries() {
    let dir = tmp();
    let d = dir.path();
    let mut rng = Rng::new(36);
    let pw = d.join("pw");
    write(&pw, b"geometry");
    for (cb, l2) in [(9u8, 6u8), (11, 13), (14, 7), (16, 10)] {
        let cs = 1u64 << cb;
        let size = (1u64 << (cb + l2)).min(2 << 20) + 2 * cs + 512;
        let img = d.join(format!("e{cb}-{l2}.qcow"));
        {
            let f = std::fs::File::create(&img).expect("create");
            let mut io = qcow_std::file::FileIo::new(f);
            let opts = qcow_core::write::CreateOptions::new(size)
                .encrypted(true)
                .cluster_bits(Some(cb))
                .l2_bits(Some(l2));
            qcow_core::write::create(&mut io, &opts).expect("create");
        }
        let mut model = vec![0u8; size as usize];
        for i in 0..40 {
            let len = 1 + rng.below(if i % 2 == 0 { 700 } else { 3 * cs });
            let len = len.min(size / 2);
            let at = if i == 39 {
                size - len
            } else {
                rng.below(size - len)
            };
            let data = rng.bytes(len as usize);
            qcow_write(&img, &pw, at, &data);
            model[at as usize..(at + len) as usize].copy_from_slice(&data);
        }
        let m = d.join("model.raw");
        write(&m, &model);
        assert_qemu_decrypts_to(&img, &pw, &m, &format!("cluster_bits {cb} l2_bits {l2}"));
    }
}
