//! The `user_data` layout: every submission carries the op kind, the session's generation and its
//! slab slot, so a completion can be routed without a lookup table and a late completion for a
//! recycled slot can be recognised and dropped.
//!
//! ```text
//!  63      56 55                  32 31                        0
//! +----------+----------------------+---------------------------+
//! | op kind  | generation (24 bits) | slot (32 bits)            |
//! +----------+----------------------+---------------------------+
//! ```

/// What a submission was for. The discriminant is stored in the top byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Accept on this ring's listener (multishot or single-shot). Slot and generation are 0.
    Accept = 1,
    /// Receive into the buffer ring for a session.
    Recv = 2,
    /// Send of a session's pending output.
    Send = 3,
    /// Close of a session's socket; the slot is already free when it completes.
    Close = 4,
    /// Read of the ring's eventfd: another thread queued results for this ring.
    Wake = 5,
    /// The ring's own wait timeout (kernels without `IORING_FEAT_EXT_ARG`).
    Timeout = 6,
    /// An `AsyncCancel` issued by the ring; its completion carries no state.
    Cancel = 7,
    /// Poll for readability (the poll-then-recv fallback).
    Poll = 8,
    /// The busy tick, a multishot timeout that bounds waits counting sends (see
    /// `uring.rs`'s `wait`); the generation tells a live tick from a removed one.
    Tick = 9,
}

const SLOT_BITS: u32 = 32;
const GENERATION_BITS: u32 = 24;
const OP_SHIFT: u32 = SLOT_BITS + GENERATION_BITS;
/// Generations wrap at this mask; 2^24 reuses of one slot before a collision is possible.
pub const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

const _: () = assert!(SLOT_BITS + GENERATION_BITS + 8 == 64);
const _: () = assert!(Op::Tick as u8 as u32 <= 0xff);

/// The wake-up read on the eventfd: a reserved value with no session.
pub const WAKE: u64 = encode(Op::Wake, 0, 0);
/// The ring's wait timeout: a reserved value with no session.
pub const TIMEOUT: u64 = encode(Op::Timeout, 0, 0);
/// Accept completions of the ring's first listener: a reserved value with no session.
pub const ACCEPT: u64 = accept(0);

/// Accept completions of the ring's listener `index`, which takes the slot's place.
pub const fn accept(index: u32) -> u64 {
    encode(Op::Accept, 0, index)
}

/// Packs an op kind, a generation and a slot into one `user_data`.
pub const fn encode(op: Op, generation: u32, slot: u32) -> u64 {
    ((op as u64) << OP_SHIFT) | (((generation & GENERATION_MASK) as u64) << SLOT_BITS) | slot as u64
}

/// Unpacks a `user_data`; `None` for a value this crate never submits (our bug: callers crash).
pub fn decode(user_data: u64) -> Option<(Op, u32, u32)> {
    let op = match (user_data >> OP_SHIFT) as u8 {
        1 => Op::Accept,
        2 => Op::Recv,
        3 => Op::Send,
        4 => Op::Close,
        5 => Op::Wake,
        6 => Op::Timeout,
        7 => Op::Cancel,
        8 => Op::Poll,
        9 => Op::Tick,
        _ => return None,
    };
    let generation = ((user_data >> SLOT_BITS) as u32) & GENERATION_MASK;
    Some((op, generation, user_data as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_op() {
        for op in [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Close,
            Op::Wake,
            Op::Timeout,
            Op::Cancel,
            Op::Poll,
            Op::Tick,
        ] {
            for (generation, slot) in [(0, 0), (1, 7), (GENERATION_MASK, u32::MAX)] {
                assert_eq!(
                    decode(encode(op, generation, slot)),
                    Some((op, generation, slot))
                );
            }
        }
    }

    #[test]
    fn generation_wraps_within_its_field() {
        let ud = encode(Op::Send, GENERATION_MASK + 1, 3);
        assert_eq!(decode(ud), Some((Op::Send, 0, 3)));
    }

    #[test]
    fn unknown_op_is_rejected() {
        assert_eq!(decode(0), None);
        assert_eq!(decode(0xff << 56), None);
    }
}
