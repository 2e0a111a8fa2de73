//! Generates the agent API (messages + ttrpc async client/server) from `proto/agent.proto`.
//!
//! The generator (ttrpc-codegen over rust-protobuf's pure-Rust parser) needs no `protoc`.
//! Output goes to `src/generated/`, which is ignored by git and never edited by hand.

use std::path::Path;

fn main() {
    let out = Path::new("src/generated");
    std::fs::create_dir_all(out).expect("create src/generated");
    println!("cargo:rerun-if-changed=proto/agent.proto");
    println!("cargo:rerun-if-changed=build.rs");
    ttrpc_codegen::Codegen::new()
        .out_dir(out)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate agent ttrpc code");
}
