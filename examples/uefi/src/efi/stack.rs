//! The application's own stack, and how much of it is used.
//!
//! The firmware's stack is small: the UEFI specification promises an application
//! 128 KiB, and reading a chain needs about 78 KiB at its deepest (the five
//! `Image`s and their table caches, and the copies made while opening them; see
//! `qcow-core/README.md`). So `efi_main` moves to a stack of [`STACK_LEN`]
//! bytes in `.bss` (in no file, zeroed by the loader), painted with a pattern first:
//! [`used`] finds the deepest word no longer holding it. Interrupts taken while the
//! application runs use this stack too, and count.

use core::arch::asm;
use core::ffi::c_void;
use core::ptr::{self, addr_of_mut};

/// Bytes of stack.
pub const STACK_LEN: usize = 256 * 1024;
/// The pattern painted.
const PATTERN: u64 = 0x5155_4346_5354_4b21;

/// The stack, 16-byte aligned as the System V ABI wants at a call.
#[repr(C, align(16))]
struct Stack([u64; STACK_LEN / 8]);

static mut STACK: Stack = Stack([0; STACK_LEN / 8]);

/// Paints the stack and calls `f(arg)` on it; returns what `f` returns.
///
/// # Safety
/// Called once (the stack must not be in use), and `f` must be sound to call with
/// `arg`.
pub(super) unsafe fn run_on_own_stack(
    f: extern "C" fn(*mut c_void) -> usize,
    arg: *mut c_void,
) -> usize {
    let stack = addr_of_mut!(STACK);
    // SAFETY: nothing runs on the stack yet (called once) and nothing else names it.
    unsafe { (*stack).0.fill(PATTERN) };
    // SAFETY: one past the end of the static, 16-byte aligned (its length is).
    let top = unsafe { stack.cast::<u8>().add(STACK_LEN) };
    let ret: usize;
    // SAFETY: the old stack pointer is kept in r12, which `f` preserves (System V
    // callee-saved), and restored after the call; `f` gets `arg` in rdi and an
    // aligned stack (rsp ≡ 0 mod 16 at the `call`); clobber_abi declares every
    // register `f` may change.
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top,
            f = in(reg) f,
            inout("rdi") arg => _,
            out("r12") _,
            lateout("rax") ret,
            clobber_abi("C"),
        );
    }
    ret
}

/// Bytes of the stack used so far, at the deepest.
pub fn used() -> usize {
    let stack = addr_of_mut!(STACK).cast::<u64>().cast_const();
    let words = STACK_LEN / 8;
    let mut untouched = 0;
    // SAFETY: reads words of the static from its bottom up, and stops at the
    // first one that does not hold the pattern: below the stack pointer, free
    // memory nobody writes meanwhile (one processor; an interrupt would write
    // only near the stack pointer, well above).
    while untouched < words && unsafe { ptr::read_volatile(stack.add(untouched)) } == PATTERN {
        untouched += 1;
    }
    (words - untouched) * 8
}
