//! How much stack the application uses: the free part of the stack is painted with
//! a pattern at entry, and [`used`] finds the deepest word no longer holding it.
//!
//! The stack's bounds come from the firmware's hand-off blocks (HOBs, in the system
//! table's configuration table): EDK II (OVMF) describes the stack DXE runs on, and
//! so boot applications, with a memory allocation HOB named
//! `gEfiHobMemoryAllocStackGuid`. Without one, nothing is painted and nothing is
//! measured. The lowest page is left alone: EDK II may make it a guard page.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use r_efi::efi::{Guid, SystemTable};

/// The pattern painted.
const PATTERN: u64 = 0x5155_4346_5354_4b21;
/// Bytes left unpainted below the painter's own stack pointer (its frame, and a
/// margin for an interrupt taken while painting).
const MARGIN: usize = 4096;
/// Bytes left unpainted at the bottom (a possible guard page).
const GUARD: usize = 4096;

/// gEfiHobListGuid: the configuration table entry holding the HOB list.
const HOB_LIST: Guid = Guid::from_fields(
    0x7739_f24c,
    0x93d7,
    0x11d4,
    0x9a,
    0x3a,
    &[0x00, 0x90, 0x27, 0x3f, 0xc1, 0x4d],
);
/// gEfiHobMemoryAllocStackGuid: the name of the stack's memory allocation HOB.
const STACK_HOB: Guid = Guid::from_fields(
    0x4ed4_bf27,
    0x4092,
    0x42e9,
    0x80,
    0x7d,
    &[0x52, 0x7b, 0x1d, 0x00, 0xc9, 0xbd],
);
const HOB_MEMORY_ALLOCATION: u16 = 0x0002;
const HOB_END_OF_LIST: u16 = 0xffff;
/// HOBs looked at before giving up (a list is a few hundred long).
const MAX_HOBS: usize = 4096;

/// The stack pointer when painting, and the lowest painted address (0: not painted).
static TOP: AtomicUsize = AtomicUsize::new(0);
static BOTTOM: AtomicUsize = AtomicUsize::new(0);

/// The current stack pointer.
fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads a register; touches no memory.
    unsafe { asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    sp
}

/// The stack's base address and length, from the HOB list.
///
/// # Safety
/// `st` must be the firmware's valid system table.
unsafe fn stack_bounds(st: *const SystemTable) -> Option<(usize, usize)> {
    // SAFETY: the caller's system table and its configuration table are valid.
    let (n, table) = unsafe { ((*st).number_of_table_entries, (*st).configuration_table) };
    if table.is_null() {
        return None;
    }
    // SAFETY: the configuration table has `n` entries.
    let entries = unsafe { core::slice::from_raw_parts(table, n) };
    let mut hob = entries
        .iter()
        .find(|e| e.vendor_guid == HOB_LIST)?
        .vendor_table
        .cast::<u8>()
        .cast_const();
    for _ in 0..MAX_HOBS {
        if hob.is_null() {
            return None;
        }
        // SAFETY: `hob` points at a HOB of the firmware's list: a generic header
        // (type u16, length u16, reserved u32), then the HOB's own fields; a
        // memory allocation HOB has its name (a GUID) at 8, base at 24, length at
        // 32. The list ends with an end-of-list HOB.
        let (kind, len) = unsafe {
            (
                hob.cast::<u16>().read_unaligned(),
                hob.add(2).cast::<u16>().read_unaligned(),
            )
        };
        if kind == HOB_END_OF_LIST || len < 8 {
            return None;
        }
        if kind == HOB_MEMORY_ALLOCATION && len >= 48 {
            // SAFETY: as above, inside this HOB of `len` bytes.
            let (name, base, size) = unsafe {
                (
                    hob.add(8).cast::<Guid>().read_unaligned(),
                    hob.add(24).cast::<u64>().read_unaligned(),
                    hob.add(32).cast::<u64>().read_unaligned(),
                )
            };
            if name == STACK_HOB {
                return Some((usize::try_from(base).ok()?, usize::try_from(size).ok()?));
            }
        }
        // SAFETY: the next HOB follows this one.
        hob = unsafe { hob.add(usize::from(len)) };
    }
    None
}

/// Paints the free part of the stack, when the firmware says where it is.
///
/// # Safety
/// Called once, at entry, with the firmware's valid system table; nothing may rely
/// on the contents of the stack below the caller's frame (nothing does: it is free).
#[inline(never)]
pub(super) unsafe fn paint(st: *const SystemTable) {
    // SAFETY: the caller's system table is valid.
    let Some((base, len)) = (unsafe { stack_bounds(st) }) else {
        return;
    };
    let sp = stack_pointer();
    let (Some(bottom), Some(end)) = (base.checked_add(GUARD), sp.checked_sub(MARGIN)) else {
        return;
    };
    if sp > base.saturating_add(len) || bottom >= end {
        return; // not running on that stack after all
    }
    let words = (end - bottom) / 8;
    // SAFETY: [bottom, bottom + 8 * words) lies inside the stack the firmware
    // allocated and below our stack pointer by more than our frame: free memory,
    // ours to scribble on. Interrupts taken meanwhile use the stack below `sp` and
    // are over before `rep stosq` goes on. The direction flag is clear (UEFI).
    unsafe {
        asm!(
            "rep stosq",
            inout("rdi") bottom => _,
            inout("rcx") words => _,
            in("rax") PATTERN,
            options(nostack, preserves_flags)
        );
    }
    TOP.store(sp, Ordering::Relaxed);
    BOTTOM.store(bottom, Ordering::Relaxed);
}

/// Bytes of stack used below the entry point's frame since painting, and the bytes
/// that were painted (`None` when the stack could not be painted). Equal figures
/// mean the paint was used up: at least that much.
pub fn used() -> Option<(usize, usize)> {
    let (top, bottom) = (TOP.load(Ordering::Relaxed), BOTTOM.load(Ordering::Relaxed));
    if bottom == 0 || stack_pointer() < bottom {
        return None;
    }
    let mut p = bottom;
    // SAFETY: [bottom, top) is stack memory (see `paint`); reading it, painted or
    // not, is reading initialized bytes. Words below our own frame are read only.
    while p < top && unsafe { core::ptr::read_volatile(p as *const u64) } == PATTERN {
        p += 8;
    }
    Some((top - p, top - bottom))
}
