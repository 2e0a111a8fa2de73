//! vessel-vmm: the built-in microVM monitor. Not implemented yet (its own issue); the shim
//! uses the QEMU backend until then.

fn main() {
    eprintln!("vessel-vmm: the built-in VMM is not implemented yet; use hypervisor = \"qemu\"");
    std::process::exit(2);
}
