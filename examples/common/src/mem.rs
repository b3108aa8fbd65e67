//! The C library functions the compiler itself emits calls to (block copies and
//! fills, slice comparison) and `CStr::from_ptr` uses (`strlen`), for programs
//! linked without libc: on bare-metal targets (`x86_64-unknown-none`, ...)
//! `compiler_builtins` defines them, but not on the Linux target both examples are
//! built for. They are written in assembly so that the compiler cannot turn their
//! loops back into calls to themselves, and use no absolute address, so they serve
//! position-dependent (firmware) and position-independent (uefi) code alike.
//!
//! SysV ABI: arguments in rdi, rsi, rdx; result in rax; the direction flag is clear
//! on entry and must be clear on return. (The UEFI application calls them from its
//! own code only, which follows the SysV ABI too.)
//!
//! Also here: `rust_eh_personality`. The precompiled core library is built to unwind,
//! and its unwind tables name the personality routine. With panic = "abort" nothing
//! ever unwinds, so it is never called: a trap will do.
//!
//! The assembly only defines these symbols; their callers (the compiler's generated
//! code, `CStr::from_ptr`) keep the C contracts: valid, non-overlapping (but for
//! `memmove`) ranges of `n` bytes, a NUL-terminated string.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the `mem` feature is x86_64 assembly");

core::arch::global_asm!(
    // void *memcpy(void *dst, const void *src, size_t n)
    ".globl memcpy",
    ".type memcpy,@function",
    "memcpy:",
    "mov rax, rdi",
    "mov rcx, rdx",
    "rep movsb",
    "ret",
    // void *memmove(void *dst, const void *src, size_t n): backwards when dst > src.
    ".globl memmove",
    ".type memmove,@function",
    "memmove:",
    "mov rax, rdi",
    "mov rcx, rdx",
    "cmp rdi, rsi",
    "jbe .Lmemmove_forward",
    "lea rsi, [rsi + rdx - 1]",
    "lea rdi, [rdi + rdx - 1]",
    "std",
    "rep movsb",
    "cld",
    "ret",
    ".Lmemmove_forward:",
    "rep movsb",
    "ret",
    // void *memset(void *dst, int c, size_t n)
    ".globl memset",
    ".type memset,@function",
    "memset:",
    "mov r8, rdi",
    "mov eax, esi",
    "mov rcx, rdx",
    "rep stosb",
    "mov rax, r8",
    "ret",
    // int memcmp(const void *a, const void *b, size_t n), and bcmp (same contract,
    // only zero/non-zero matters).
    ".globl memcmp",
    ".type memcmp,@function",
    ".globl bcmp",
    ".type bcmp,@function",
    "memcmp:",
    "bcmp:",
    "xor eax, eax",
    "test rdx, rdx",
    "jz .Lmemcmp_done",
    "mov rcx, rdx",
    "repe cmpsb",
    "je .Lmemcmp_done",
    "movzx eax, byte ptr [rdi - 1]",
    "movzx ecx, byte ptr [rsi - 1]",
    "sub eax, ecx",
    ".Lmemcmp_done:",
    "ret",
    ".globl rust_eh_personality",
    ".type rust_eh_personality,@function",
    "rust_eh_personality:",
    "ud2",
    // size_t strlen(const char *s)
    ".globl strlen",
    ".type strlen,@function",
    "strlen:",
    "mov rdx, rdi",
    "xor eax, eax",
    "mov rcx, -1",
    "repne scasb",
    "lea rax, [rdi - 1]",
    "sub rax, rdx",
    "ret",
);
