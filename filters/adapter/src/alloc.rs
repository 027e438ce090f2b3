//! The module's one heap: talc, behind the C allocation functions and Rust's global allocator.
//!
//! wasi-libc calls `malloc` from the code std keeps for a panic message
//! (`getenv("RUST_BACKTRACE")`, `getcwd`). If libc's own `malloc` were linked, its dlmalloc
//! would cost about 10 KB of every module. Defining `malloc`, `free` and the rest here keeps
//! libc's allocator out of the link: a module carries one allocator (talc, smaller and faster
//! than dlmalloc), not two.
//!
//! Envoy uses an exported `malloc` to place what it hands the module (headers, properties,
//! shared data), and the SDK frees those bytes with Rust's allocator and a layout of its own
//! guess (`Vec::from_raw_parts(ptr, len, len)`). So both sides must be one scheme: every
//! block, C or Rust, carries its size and alignment just before the pointer, and freeing
//! reads them from there rather than trusting the caller's layout (16 bytes per block).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// wasi-libc's `malloc` alignment (`alignof(max_align_t)`), which also leaves room for the
/// header: two `usize`s, at most 16 bytes.
const MIN_ALIGN: usize = 16;
const HEADER: usize = 2 * size_of::<usize>();
const _: () = assert!(HEADER <= MIN_ALIGN);

/// A heap whose blocks carry their own layout: `malloc`/`free` semantics over `H`.
pub(crate) struct HeaderHeap<H>(pub(crate) H);

impl<H: GlobalAlloc> HeaderHeap<H> {
    /// `size` bytes aligned to `align` (a power of two, else null).
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`]; the result is null or a block for [`Self::free`] and
    /// [`Self::realloc_block`].
    pub(crate) unsafe fn allocate(&self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        if !align.is_power_of_two() {
            return ptr::null_mut();
        }
        let align = align.max(MIN_ALIGN);
        let Some(layout) = size
            .checked_add(align)
            .and_then(|total| Layout::from_size_align(total, align).ok())
        else {
            return ptr::null_mut();
        };
        // SAFETY: the layout's size is at least `align`, never zero.
        let base = unsafe {
            if zeroed {
                self.0.alloc_zeroed(layout)
            } else {
                self.0.alloc(layout)
            }
        };
        if base.is_null() {
            return base;
        }
        // SAFETY: the underlying block is `align + size` bytes; the header sits in its first
        // `align` (>= HEADER) bytes.
        unsafe { write_header(base, layout.size(), align) }
    }

    /// # Safety
    /// `block` is null or a live block of this heap.
    pub(crate) unsafe fn free(&self, block: *mut u8) {
        if block.is_null() {
            return;
        }
        // SAFETY: the header describes the layout the underlying block was allocated with.
        unsafe {
            let (total, align) = read_header(block);
            self.0.dealloc(
                block.sub(align),
                Layout::from_size_align_unchecked(total, align),
            );
        }
    }

    /// Grows or shrinks a block, in place when the underlying heap can; null (and the old
    /// block untouched) when it cannot.
    ///
    /// # Safety
    /// As [`Self::free`].
    pub(crate) unsafe fn realloc_block(&self, block: *mut u8, size: usize) -> *mut u8 {
        if block.is_null() {
            // SAFETY: a fresh block.
            return unsafe { self.allocate(size, MIN_ALIGN, false) };
        }
        // SAFETY: `block` is live; the underlying realloc keeps the header and the data
        // behind it (the data stays `align` bytes from the start).
        unsafe {
            let (total, align) = read_header(block);
            let Some(new_total) = size
                .checked_add(align)
                .filter(|t| Layout::from_size_align(*t, align).is_ok())
            else {
                return ptr::null_mut();
            };
            let old = Layout::from_size_align_unchecked(total, align);
            let base = self.0.realloc(block.sub(align), old, new_total);
            if base.is_null() {
                return base;
            }
            write_header(base, new_total, align)
        }
    }
}

/// Writes the header into the first `align` bytes of `base`; returns the block after it.
///
/// # Safety
/// `base` is valid for `align` bytes and aligned to `align`, a power of two >= MIN_ALIGN.
unsafe fn write_header(base: *mut u8, total: usize, align: usize) -> *mut u8 {
    // SAFETY: as the function's contract; usize-aligned since align >= MIN_ALIGN.
    unsafe {
        let block = base.add(align);
        let header = block.cast::<usize>();
        header.sub(1).write(total);
        header.sub(2).write(align);
        block
    }
}

/// The underlying block's size and alignment.
///
/// # Safety
/// `block` is a live block of a [`HeaderHeap`].
unsafe fn read_header(block: *mut u8) -> (usize, usize) {
    // SAFETY: written by write_header just before the block.
    unsafe {
        let header = block.cast::<usize>();
        (header.sub(1).read(), header.sub(2).read())
    }
}

// SAFETY: every block is allocated and freed with the layout in its header, so the layout
// a caller passes to dealloc/realloc is not needed (and Envoy's blocks have none).
unsafe impl<H: GlobalAlloc> GlobalAlloc for HeaderHeap<H> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.allocate(layout.size(), layout.align(), false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.allocate(layout.size(), layout.align(), true) }
    }

    unsafe fn dealloc(&self, block: *mut u8, _layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.free(block) }
    }

    unsafe fn realloc(&self, block: *mut u8, _layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.realloc_block(block, new_size) }
    }
}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
mod wasm {
    use super::{HeaderHeap, MIN_ALIGN};

    #[global_allocator]
    static HEAP: HeaderHeap<talc::wasm::WasmDynamicTalc> =
        HeaderHeap(talc::wasm::new_wasm_dynamic_allocator());

    /// ENOMEM in wasi-libc.
    const ENOMEM: i32 = 48;

    /// Also what Envoy calls to place data in the module (exported).
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn malloc(size: usize) -> *mut u8 {
        // SAFETY: see HeaderHeap::allocate.
        unsafe { HEAP.allocate(size, MIN_ALIGN, false) }
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut u8 {
        match count.checked_mul(size) {
            // SAFETY: see HeaderHeap::allocate.
            Some(total) => unsafe { HEAP.allocate(total, MIN_ALIGN, true) },
            None => core::ptr::null_mut(),
        }
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
        // SAFETY: see HeaderHeap::allocate.
        unsafe { HEAP.allocate(size, align, false) }
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn posix_memalign(out: *mut *mut u8, align: usize, size: usize) -> i32 {
        // SAFETY: see HeaderHeap::allocate; `out` is the caller's pointer to write to.
        unsafe {
            let block = HEAP.allocate(size, align, false);
            if block.is_null() {
                return ENOMEM;
            }
            out.write(block);
        }
        0
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn free(block: *mut u8) {
        // SAFETY: callers free blocks of this heap.
        unsafe { HEAP.free(block) }
    }

    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn realloc(block: *mut u8, size: usize) -> *mut u8 {
        // SAFETY: as free.
        unsafe { HEAP.realloc_block(block, size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    const HEAP: HeaderHeap<System> = HeaderHeap(System);

    #[test]
    fn blocks_are_aligned_and_hold_their_bytes() {
        for align in [1, 8, 16, 64, 4096] {
            // SAFETY: blocks of HEAP, freed once.
            unsafe {
                let block = HEAP.allocate(100, align, false);
                assert!(!block.is_null());
                assert_eq!(block as usize % align.max(MIN_ALIGN), 0);
                ptr::write_bytes(block, 0xab, 100);
                HEAP.free(block);
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_and_realloc_keeps_the_prefix_and_alignment() {
        // SAFETY: blocks of HEAP, freed once.
        unsafe {
            let block = HEAP.allocate(32, 64, true);
            assert!((0..32).all(|i| *block.add(i) == 0));
            for i in 0..32 {
                *block.add(i) = i as u8;
            }
            let grown = HEAP.realloc_block(block, 100_000);
            assert_eq!(grown as usize % 64, 0);
            assert!((0..32).all(|i| *grown.add(i) == i as u8));
            let shrunk = HEAP.realloc_block(grown, 8);
            assert!((0..8).all(|i| *shrunk.add(i) == i as u8));
            HEAP.free(shrunk);
            HEAP.free(ptr::null_mut());
            let fresh = HEAP.realloc_block(ptr::null_mut(), 8);
            assert!(!fresh.is_null());
            HEAP.free(fresh);
        }
    }

    #[test]
    fn a_malloc_block_is_freed_through_rust_with_any_layout() {
        // What the SDK does with Envoy's bytes: malloc(n), then Vec::from_raw_parts(p, n, n).
        // SAFETY: the block is freed once.
        unsafe {
            let block = HEAP.allocate(24, MIN_ALIGN, false);
            HEAP.dealloc(block, Layout::from_size_align_unchecked(24, 1));
            let block = HEAP.alloc(Layout::from_size_align_unchecked(10, 2));
            let block = HEAP.realloc(block, Layout::from_size_align_unchecked(10, 2), 300);
            HEAP.free(block);
        }
    }

    #[test]
    fn impossible_requests_give_null() {
        // SAFETY: nothing is allocated.
        unsafe {
            assert!(HEAP.allocate(usize::MAX, MIN_ALIGN, false).is_null());
            assert!(HEAP.allocate(8, 3, false).is_null());
            let block = HEAP.allocate(8, MIN_ALIGN, false);
            assert!(HEAP.realloc_block(block, usize::MAX).is_null());
            HEAP.free(block);
        }
    }
}
