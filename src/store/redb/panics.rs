//! redb's panics, turned into errors.
//!
//! redb asserts on some damaged files instead of returning an error (a
//! truncated file trips `raw_file_len() >= layout().len()`, for one). A
//! damaged file is an operator's problem to be told about in one sentence
//! naming the file, not a crash with a backtrace; and a panic while writing
//! is a failed batch like any other. So every call into redb runs inside
//! [`catch`], which unwinds the panic into an `Err` with its message.
//!
//! The process's panic hook would still print the panic (and a backtrace)
//! before it is caught. `catch` silences it for its own thread while it
//! runs, through a hook installed once that defers to the previous one in
//! every other case, so panics elsewhere print exactly as before.

use std::{
    cell::Cell,
    panic::{self, AssertUnwindSafe},
    sync::Once,
};

thread_local! {
    /// Set while this thread is inside [`catch`].
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

static QUIET_HOOK: Once = Once::new();

/// True while this thread is inside `catch`: a panic now becomes an
/// error, so a panic hook that fails on panics (the simulation's) must
/// leave it alone.
pub fn is_catching() -> bool {
    CATCHING.with(Cell::get)
}

/// Runs `f`; a panic inside it becomes `Err(its message)`, unprinted.
pub(super) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = CATCHING.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(outer));
    result.map_err(|payload| panic_message(&*payload))
}

/// A panic payload's message (`panic!` makes a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        assert_eq!(catch(|| 7), Ok(7));
        let caught: Result<(), String> = catch(|| panic!("assertion failed: len >= 4096"));
        assert_eq!(caught, Err("assertion failed: len >= 4096".to_owned()));
        // Still catching after a caught panic, and nested calls restore.
        assert_eq!(catch(|| catch(|| 1)), Ok(Ok(1)));
    }
}
