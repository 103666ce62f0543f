//! The `peerlink` command.

fn main() {}
