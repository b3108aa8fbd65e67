//! The partition-table parser on hand-made tables, honest and lying.

use qcow_mount::parts::{crc32, parse, Kind, Partition, MAX_LOGICAL};

const S: usize = 512;

fn disk(sectors: usize) -> Vec<u8> {
    vec![0u8; sectors * S]
}

fn slot(d: &mut [u8], sector: usize, i: usize, kind: u8, lba: u32, len: u32) {
    let at = sector * S + 446 + 16 * i;
    d[at + 4] = kind;
    d[at + 8..at + 12].copy_from_slice(&lba.to_le_bytes());
    d[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
    d[sector * S + 510] = 0x55;
    d[sector * S + 511] = 0xAA;
}

fn p(number: u32, lba: u64, sectors: u64) -> Partition {
    Partition {
        number,
        start: lba * 512,
        len: sectors * 512,
    }
}

#[test]
fn crc32_known_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn no_signature_no_table() {
    let t = parse(&disk(64)[..]);
    assert_eq!(t.kind, Kind::None);
    assert!(t.parts.is_empty());
}

#[test]
fn mbr_primaries_and_logicals() {
    let mut d = disk(4096);
    slot(&mut d, 0, 0, 0x83, 64, 100);
    slot(&mut d, 0, 1, 0x05, 1000, 2000);
    slot(&mut d, 0, 3, 0x83, 3100, 10);
    // EBR at 1000: logical at +8, next EBR at ext+500.
    slot(&mut d, 1000, 0, 0x83, 8, 100);
    slot(&mut d, 1000, 1, 0x05, 500, 200);
    slot(&mut d, 1500, 0, 0x83, 8, 50);
    let t = parse(&d[..]);
    assert_eq!(t.kind, Kind::Mbr);
    assert_eq!(
        t.parts,
        vec![
            p(1, 64, 100),
            p(4, 3100, 10),
            p(5, 1008, 100),
            p(6, 1508, 50)
        ]
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
}

#[test]
fn mbr_lies_are_dropped_with_warnings() {
    let mut d = disk(1024);
    slot(&mut d, 0, 0, 0x83, 64, 100);
    slot(&mut d, 0, 1, 0x83, 100, 100); // overlaps p1
    slot(&mut d, 0, 2, 0x83, 900, 0xFFFF_FFFF); // past the end
    slot(&mut d, 0, 3, 0x83, 500, 100); // fine
    let t = parse(&d[..]);
    assert_eq!(t.parts, vec![p(1, 64, 100), p(4, 500, 100)]);
    assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
}

#[test]
fn ebr_loop_is_stopped() {
    let mut d = disk(4096);
    slot(&mut d, 0, 0, 0x05, 1000, 2000);
    slot(&mut d, 1000, 0, 0x83, 8, 10);
    slot(&mut d, 1000, 1, 0x05, 100, 100);
    slot(&mut d, 1100, 0, 0x83, 8, 10);
    slot(&mut d, 1100, 1, 0x05, 0x7FFF_FFFF, 100); // outside: stops
    let t = parse(&d[..]);
    assert_eq!(t.parts, vec![p(5, 1008, 10), p(6, 1108, 10)]);
    // Now make the second EBR point back at the first.
    slot(&mut d, 1100, 1, 0x05, 1, 100);
    slot(&mut d, 1001, 1, 0x05, 100, 100);
    let t = parse(&d[..]);
    assert!(t.parts.len() <= MAX_LOGICAL);
    assert!(
        t.warnings.iter().any(|w| w.contains("loops")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn ebr_inside_a_logical_partition_stops_the_chain() {
    // Found by the partitions fuzz target: the second EBR (sector 1020) lies inside
    // logical 5 (1010..1030); its logical (1021..1041) overlapped logical 5 unseen.
    let mut d = disk(4096);
    slot(&mut d, 0, 0, 0x05, 1000, 64);
    slot(&mut d, 1000, 0, 0x83, 10, 20);
    slot(&mut d, 1000, 1, 0x05, 20, 40);
    slot(&mut d, 1020, 0, 0x83, 1, 20);
    let t = parse(&d[..]);
    assert_eq!(t.parts, vec![p(5, 1010, 20)]);
    assert!(
        t.warnings.iter().any(|w| w.contains("inside a logical")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn long_ebr_chain_is_bounded() {
    let sectors = (MAX_LOGICAL + 10) * 4 + 16;
    let mut d = disk(sectors);
    slot(&mut d, 0, 0, 0x05, 4, (sectors - 8) as u32);
    for i in 0..MAX_LOGICAL + 9 {
        let ebr = 4 + 4 * i;
        slot(&mut d, ebr, 0, 0x83, 1, 2);
        slot(&mut d, ebr, 1, 0x05, (4 * (i + 1)) as u32, 4);
    }
    let t = parse(&d[..]);
    assert_eq!(t.parts.len(), MAX_LOGICAL);
    assert!(!t.warnings.is_empty());
}

/// A disk of `sectors` with a protective MBR and a GPT holding `parts` (first, last).
fn gpt_disk(sectors: usize, parts: &[(u64, u64)]) -> Vec<u8> {
    let mut d = disk(sectors);
    slot(&mut d, 0, 0, 0xEE, 1, (sectors - 1) as u32);
    let mut entries = vec![0u8; 128 * 128];
    for (i, &(first, last)) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[..16].copy_from_slice(&[0x0F; 16]);
        e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
    }
    let last = sectors as u64 - 1;
    let write = |d: &mut Vec<u8>, lba: u64, alt: u64, ents: u64| {
        let mut h = [0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(last - 33).to_le_bytes());
        h[72..80].copy_from_slice(&ents.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let c = crc32(&h);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        let at = lba as usize * S;
        d[at..at + 92].copy_from_slice(&h);
        let e = ents as usize * S;
        d[e..e + entries.len()].copy_from_slice(&entries);
    };
    write(&mut d, 1, last, 2);
    write(&mut d, last, 1, last - 32);
    d
}

#[test]
fn gpt_entries_in_order() {
    let d = gpt_disk(2048, &[(34, 99), (100, 199), (0, 0), (500, 600)]);
    let t = parse(&d[..]);
    assert_eq!(t.kind, Kind::Gpt);
    // Entry 3 (0..0) lies outside the usable range.
    assert_eq!(t.parts, vec![p(1, 34, 66), p(2, 100, 100), p(4, 500, 101)]);
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
}

#[test]
fn gpt_bad_primary_crc_uses_backup() {
    let mut d = gpt_disk(2048, &[(34, 99)]);
    d[512 + 40] ^= 1; // primary header corrupt
    let t = parse(&d[..]);
    assert_eq!(t.parts, vec![p(1, 34, 66)]);
    assert!(t.warnings.iter().any(|w| w.contains("backup")));
}

#[test]
fn gpt_bad_crcs_everywhere_show_nothing() {
    let mut d = gpt_disk(2048, &[(34, 99)]);
    d[2 * S + 33] ^= 1; // primary entry array
    let last = 2047 * S;
    d[last + 40] ^= 1; // backup header
    let t = parse(&d[..]);
    assert_eq!(t.kind, Kind::Gpt);
    assert!(t.parts.is_empty());
    assert!(t.warnings.len() >= 2);
}

#[test]
fn gpt_overlaps_and_past_the_end() {
    let d = gpt_disk(
        2048,
        &[(34, 99), (50, 60), (100, 5000), (u64::MAX - 1, u64::MAX)],
    );
    let t = parse(&d[..]);
    assert_eq!(t.parts, vec![p(1, 34, 66)]);
    assert_eq!(t.warnings.len(), 3, "{:?}", t.warnings);
}

#[test]
fn gpt_huge_count_is_refused_without_allocating() {
    let mut d = gpt_disk(2048, &[(34, 99)]);
    // Claim 2^32-1 entries in both headers (CRCs then also fail; either way: nothing).
    for lba in [1usize, 2047] {
        d[lba * S + 80..lba * S + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    let t = parse(&d[..]);
    assert!(t.parts.is_empty());
}

#[test]
fn truncated_and_random_bytes_never_panic() {
    let base = gpt_disk(256, &[(34, 99), (100, 150)]);
    for cut in [0, 1, 511, 512, 513, 1024, 2000, base.len() - 1] {
        let _ = parse(&base[..cut]);
    }
    let mut x = 0x1234_5678u32;
    for _ in 0..200 {
        let mut d = base.clone();
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % d.len();
            d[i] = (x >> 8) as u8;
        }
        let t = parse(&d[..]);
        for part in &t.parts {
            assert!(part.start + part.len <= d.len() as u64);
        }
    }
}
