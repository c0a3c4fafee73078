//! Bounded polling: every wait in the harness has a limit and says what it
//! waited for (the test kit's, shared with the daemon's tests).

pub use cxr_led_test_kit::wait::wait_until_blocking as wait_until;
