//! The conformance suite on the in-process backend.
novarpc_conformance::conformance_suite!(novarpc_conformance::backends::memory());
