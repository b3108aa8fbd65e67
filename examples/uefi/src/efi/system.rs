//! The entry point and the system table.

use core::ffi::c_void;
use core::fmt::Write;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use r_efi::efi::{self, Guid, Handle, Status, SystemTable};
use r_efi::protocols::{block_io, loaded_image, simple_file_system};

use super::{BlockDevice, EfiError, File};
use crate::app::Memory;

/// The system table, for the panic handler.
static SYSTEM_TABLE: AtomicPtr<SystemTable> = AtomicPtr::new(ptr::null_mut());

/// The system table, valid for the whole run (see the module's invariant).
pub struct System {
    st: *mut SystemTable,
    image: Handle,
}

/// Called by gnu-efi's start code (`_start` in crt0-efi-x86_64.o) after it applied
/// the image's relocations, with the System V calling convention (crt0 converts
/// from the firmware's Microsoft one).
///
/// # Safety
/// Called once, by crt0, with the image handle and system table the firmware passed.
#[no_mangle]
pub unsafe extern "C" fn efi_main(image: Handle, st: *mut SystemTable) -> Status {
    if st.is_null() {
        return Status::INVALID_PARAMETER;
    }
    SYSTEM_TABLE.store(st, Ordering::Relaxed);
    let mut system = System { st, image };
    // SAFETY: called once; `on_own_stack` takes a pointer to a System.
    let status =
        unsafe { super::stack::run_on_own_stack(on_own_stack, ptr::addr_of_mut!(system).cast()) };
    Status::from_usize(status)
}

/// The application, on its own stack.
extern "C" fn on_own_stack(system: *mut c_void) -> usize {
    // In .bss: costs nothing in the file, zeroed by the firmware's loader.
    static mut MEMORY: Memory = Memory::ZERO;
    // SAFETY: `efi_main` calls this once, on the only processor we use, and nothing
    // else names MEMORY, so this is the one and only reference to it.
    let memory = unsafe { &mut *ptr::addr_of_mut!(MEMORY) };
    // SAFETY: `efi_main` passes a pointer to its System, alive during the call.
    let system = unsafe { &*system.cast::<System>() };
    crate::app::main(system, memory).as_usize()
}

/// A panic (none is expected: the code avoids every panicking operation) is
/// reported on the console, then the machine is shut down.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let st = SYSTEM_TABLE.load(Ordering::Relaxed);
    if !st.is_null() {
        let system = System {
            st,
            image: ptr::null_mut(),
        };
        let mut out = crate::console::Console::new(&system);
        let _ = writeln!(out, "qcow: internal error: {info}");
        out.flush();
        system.shutdown();
    }
    loop {
        core::hint::spin_loop();
    }
}

impl System {
    fn table(&self) -> &SystemTable {
        // SAFETY: `st` is the firmware's system table, non-null (checked at entry)
        // and valid while boot services are (the module's invariant).
        unsafe { &*self.st }
    }

    fn boot(&self) -> &efi::BootServices {
        // SAFETY: the system table's boot services pointer is valid while boot
        // services are.
        unsafe { &*self.table().boot_services }
    }

    /// Writes a NUL-terminated UCS-2 string on the console.
    pub fn output(&self, ucs2: &mut [u16]) {
        if ucs2.last() != Some(&0) {
            return;
        }
        let out = self.table().con_out;
        if out.is_null() {
            return;
        }
        // SAFETY: `out` is the console's protocol interface, and the string is
        // NUL-terminated; the firmware only reads it (the pointer is `*mut` in the
        // specification's prototype alone).
        let _ = unsafe { ((*out).output_string)(out, ucs2.as_mut_ptr()) };
    }

    /// Turns off the watchdog timer the boot manager armed (5 minutes) before
    /// starting us: reading large images may take longer.
    pub fn disable_watchdog(&self) {
        // No pointers are passed (a NULL watchdog data string). (r-efi declares the
        // firmware's functions safe to call: only dereferencing what they return
        // needs `unsafe`.)
        let _ = (self.boot().set_watchdog_timer)(0, 0, 0, ptr::null_mut());
    }

    /// Powers the machine off. Returns only if the firmware could not.
    pub fn shutdown(&self) -> Status {
        let rt = self.table().runtime_services;
        if rt.is_null() {
            return Status::UNSUPPORTED;
        }
        // SAFETY: the runtime services table is valid; no reset data is passed.
        unsafe {
            ((*rt).reset_system)(efi::RESET_SHUTDOWN, Status::SUCCESS, 0, ptr::null_mut());
        }
        Status::DEVICE_ERROR
    }

    /// The interface of protocol `guid` on `handle`, if it has one.
    fn protocol<T>(&self, handle: Handle, guid: &Guid) -> Option<*mut T> {
        let mut guid = *guid;
        let mut iface: *mut c_void = ptr::null_mut();
        // Both pointers are to locals, written by the firmware on success.
        let status = (self.boot().handle_protocol)(handle, &mut guid, &mut iface);
        (!status.is_error() && !iface.is_null()).then_some(iface.cast())
    }

    /// The root directory of the volume the application was loaded from.
    pub fn boot_volume(&self) -> Result<File, BootVolumeError> {
        let loaded: *mut loaded_image::Protocol = self
            .protocol(self.image, &loaded_image::PROTOCOL_GUID)
            .ok_or(BootVolumeError::NoLoadedImage)?;
        // SAFETY: the loaded image protocol of our own image is valid while it runs.
        let device = unsafe { (*loaded).device_handle };
        let fs: *mut simple_file_system::Protocol = self
            .protocol(device, &simple_file_system::PROTOCOL_GUID)
            .ok_or(BootVolumeError::NoFileSystem)?;
        let mut root = ptr::null_mut();
        // SAFETY: `fs` is a valid interface; the firmware writes the root's handle.
        let status = unsafe { ((*fs).open_volume)(fs, &mut root) };
        EfiError::check(status).map_err(BootVolumeError::Open)?;
        // SAFETY: a successful OpenVolume returned an open directory, now ours.
        unsafe { File::from_raw(root) }.ok_or(BootVolumeError::Open(EfiError::BadPath))
    }

    /// Fills `handles` with the handles that have a block I/O protocol; returns how
    /// many (an error when there are more than fit).
    pub fn block_handles(&self, handles: &mut [Handle]) -> Result<usize, EfiError> {
        let mut guid = block_io::PROTOCOL_GUID;
        let mut size = core::mem::size_of_val(handles);
        // The firmware writes at most `size` bytes of handles into `handles` and the
        // size it used (or needs) into `size`.
        let status = (self.boot().locate_handle)(
            efi::BY_PROTOCOL,
            &mut guid,
            ptr::null_mut(),
            &mut size,
            handles.as_mut_ptr(),
        );
        if status == Status::NOT_FOUND {
            return Ok(0);
        }
        EfiError::check(status)?;
        Ok((size / core::mem::size_of::<Handle>()).min(handles.len()))
    }

    /// The block device of `handle`.
    pub fn block_device(&self, handle: Handle) -> Option<BlockDevice> {
        let proto = self.protocol(handle, &block_io::PROTOCOL_GUID)?;
        // SAFETY: a block I/O interface the firmware handed out.
        unsafe { BlockDevice::from_raw(proto) }
    }
}

/// Why the boot volume could not be opened.
pub enum BootVolumeError {
    /// Our image has no loaded image protocol.
    NoLoadedImage,
    /// The device we were loaded from has no file system.
    NoFileSystem,
    /// Opening its root directory failed.
    Open(EfiError),
}

impl core::fmt::Display for BootVolumeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootVolumeError::NoLoadedImage => f.write_str("no loaded image protocol"),
            BootVolumeError::NoFileSystem => f.write_str("the boot device has no file system"),
            BootVolumeError::Open(e) => write!(f, "cannot open its root directory: {e:?}"),
        }
    }
}
