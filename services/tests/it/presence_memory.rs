//! The presence suite against the in-process [`Memory`] table.

use services::presence::{Memory, Presence};

use crate::presence_suite::Fixture;

/// A fresh table per test.
struct MemoryFixture(Memory);

fn fixture() -> MemoryFixture {
    MemoryFixture(Memory::new())
}

impl Fixture for MemoryFixture {
    fn presence(&self) -> &dyn Presence {
        &self.0
    }
}

presence_suite!(fixture);
