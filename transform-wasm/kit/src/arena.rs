//! A batch arena: the allocator for transform components.
//!
//! Everything a transform allocates lives for one call at most: the host
//! writes the packed batch in just before `transform-batch`, the transform
//! frees it on return, and the outcomes it returns are freed by the
//! post-return call right after the host has lifted them. So between calls
//! nothing is live, and a bump allocator that starts over whenever its
//! last block is freed serves every call from the same few pages: an
//! allocation is an add and a compare, a free a decrement. dlmalloc, the
//! default, spent about 7 % of the reference transform's time in wasm
//! (BENCHMARKS.md).
//!
//! It never fails where dlmalloc would succeed: a block that does not fit
//! what is left of the arena (a huge message, or a block something kept
//! across calls, which stops the arena from starting over) comes from the
//! system allocator instead, and is freed there. Only a component, which is
//! single-threaded, can use it as its global allocator, which
//! [`export_transform!`](crate::export_transform) does:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: maskpipe_guest::arena::BatchArena = maskpipe_guest::arena::BatchArena::new();
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;

/// Bytes served from the arena: a typical batch of ten logins needs about
/// 5 KiB (its bodies, their offsets, the outcomes and their strings).
pub const ARENA_BYTES: usize = 64 * 1024;

/// A bump allocator over [`ARENA_BYTES`] that resets when nothing in it is
/// live, falling back to [`System`].
pub struct BatchArena {
    memory: UnsafeCell<Memory>,
    state: UnsafeCell<State>,
}

#[repr(C, align(16))]
struct Memory([MaybeUninit<u8>; ARENA_BYTES]);

struct State {
    /// Offset of the first free byte.
    next: usize,
    /// Blocks handed out from the arena and not yet freed.
    live: usize,
}

// SAFETY: a component instance runs on one thread at a time and wasm32
// without the `atomics` feature has no threads, so the arena is never
// touched concurrently. Elsewhere it is not `Sync`, and so cannot be a
// global allocator.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl Sync for BatchArena {}

impl BatchArena {
    #[allow(clippy::new_without_default)] // `const`, for a `static`
    pub const fn new() -> Self {
        Self {
            memory: UnsafeCell::new(Memory([MaybeUninit::uninit(); ARENA_BYTES])),
            state: UnsafeCell::new(State { next: 0, live: 0 }),
        }
    }

    fn base(&self) -> *mut u8 {
        self.memory.get().cast()
    }

    /// The block's offset in the arena, if the arena handed it out.
    fn offset_of(&self, block: *mut u8) -> Option<usize> {
        let offset = (block as usize).wrapping_sub(self.base() as usize);
        (offset < ARENA_BYTES).then_some(offset)
    }

    /// A block of `layout` from the arena, or `None` if it does not fit.
    ///
    /// # Safety
    /// No other reference to the state may be live (single thread, no
    /// reentrancy: nothing here allocates).
    unsafe fn bump(&self, layout: Layout) -> Option<*mut u8> {
        // SAFETY: the caller guarantees exclusive access.
        let state = unsafe { &mut *self.state.get() };
        let base = self.base() as usize;
        let start = (base + state.next).checked_next_multiple_of(layout.align())? - base;
        let end = start.checked_add(layout.size())?;
        if end > ARENA_BYTES {
            return None;
        }
        state.next = end;
        state.live += 1;
        // SAFETY: `start..end` lies inside the arena.
        Some(unsafe { self.base().add(start) })
    }

    /// Bytes in use from the start of the arena (0 once it has started over).
    #[cfg(test)]
    fn used(&self) -> usize {
        // SAFETY: a read of the state, on the one thread that uses it.
        unsafe { (*self.state.get()).next }
    }
}

// SAFETY: every block is either inside the arena, handed out at most once
// per reset and only reset when none is live, or the system allocator's.
unsafe impl GlobalAlloc for BatchArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded (see `Sync`); the system allocator keeps
        // `GlobalAlloc`'s contract for what does not fit.
        unsafe { self.bump(layout).unwrap_or_else(|| System.alloc(layout)) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if self.offset_of(block).is_none() {
            // SAFETY: not ours, so the system allocator's.
            return unsafe { System.dealloc(block, layout) };
        }
        // SAFETY: exclusive access, as in `bump`.
        let state = unsafe { &mut *self.state.get() };
        state.live -= 1;
        if state.live == 0 {
            state.next = 0;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(offset) = self.offset_of(block) else {
            // SAFETY: not ours, so the system allocator's.
            return unsafe { System.realloc(block, layout, new_size) };
        };
        {
            // SAFETY: exclusive access, as in `bump`; the reference ends
            // before `alloc` below takes its own.
            let state = unsafe { &mut *self.state.get() };
            // The newest block (a growing Vec or String, typically) resizes
            // in place; any block can shrink in place.
            if offset + layout.size() == state.next && offset + new_size <= ARENA_BYTES {
                state.next = offset + new_size;
                return block;
            }
        }
        if new_size <= layout.size() {
            return block;
        }
        // SAFETY: `GlobalAlloc::realloc`'s contract makes this layout valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as in `alloc`; the old block is live and `layout.size()`
        // long, the new one at least as long, and they do not overlap.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(block, moved, layout.size());
                self.dealloc(block, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("valid layout")
    }

    #[test]
    fn starts_over_once_every_block_is_freed() {
        let arena = Box::new(BatchArena::new());
        unsafe {
            let a = arena.alloc(layout(100, 8));
            let b = arena.alloc(layout(30, 16));
            assert!(arena.offset_of(a).is_some() && arena.offset_of(b).is_some());
            assert_eq!(b as usize % 16, 0);
            assert!(b as usize >= a as usize + 100);
            arena.dealloc(a, layout(100, 8));
            assert!(arena.used() > 0, "b is still live");
            arena.dealloc(b, layout(30, 16));
            assert_eq!(arena.used(), 0);
            assert_eq!(arena.alloc(layout(100, 8)), a, "the same memory, reused");
        }
    }

    #[test]
    fn what_does_not_fit_comes_from_the_system_and_goes_back_there() {
        let arena = Box::new(BatchArena::new());
        unsafe {
            let small = arena.alloc(layout(ARENA_BYTES - 64, 8));
            let big = arena.alloc(layout(4096, 8));
            assert!(!big.is_null());
            assert!(arena.offset_of(big).is_none());
            big.write_bytes(0xAB, 4096);
            arena.dealloc(big, layout(4096, 8));
            assert!(
                arena.used() > 0,
                "a system block does not count as the arena's"
            );
            arena.dealloc(small, layout(ARENA_BYTES - 64, 8));
            assert_eq!(arena.used(), 0);
        }
    }

    #[test]
    fn the_newest_block_grows_in_place_and_others_move_with_their_bytes() {
        let arena = Box::new(BatchArena::new());
        unsafe {
            let first = arena.alloc(layout(4, 1));
            first.copy_from_nonoverlapping(b"abcd".as_ptr(), 4);
            let grown = arena.realloc(first, layout(4, 1), 64);
            assert_eq!(grown, first, "the newest block grows where it is");
            let second = arena.alloc(layout(8, 1));
            let moved = arena.realloc(grown, layout(64, 1), 128);
            assert_ne!(moved, grown, "an older block cannot grow in place");
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"abcd");
            let shrunk = arena.realloc(moved, layout(128, 1), 2);
            assert_eq!(shrunk, moved);
            let huge = arena.realloc(shrunk, layout(2, 1), 2 * ARENA_BYTES);
            assert!(arena.offset_of(huge).is_none(), "too big for the arena");
            assert_eq!(std::slice::from_raw_parts(huge, 2), b"ab");
            arena.dealloc(huge, layout(2 * ARENA_BYTES, 1));
            arena.dealloc(second, layout(8, 1));
            assert_eq!(arena.used(), 0);
        }
    }

    #[test]
    fn a_vec_and_a_string_work_through_it() {
        // The arena as a caller of `GlobalAlloc` sees it, through the
        // allocation patterns of Vec growth.
        let arena = Box::new(BatchArena::new());
        unsafe {
            let mut block = arena.alloc(layout(1, 1));
            let mut capacity = 1;
            for length in 0..10_000usize {
                if length == capacity {
                    block = arena.realloc(block, layout(capacity, 1), capacity * 2);
                    capacity *= 2;
                }
                block.add(length).write((length % 251) as u8);
            }
            let bytes = std::slice::from_raw_parts(block, 10_000);
            assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            arena.dealloc(block, layout(capacity, 1));
            assert_eq!(arena.used(), 0);
        }
    }
}
