//! The `novarpc` command's building blocks: the load generator behind
//! `novarpc bench` and the raw-client baselines it compares against.

pub mod bench;
pub mod load;
pub mod raw;
pub mod raw_amqp1;
