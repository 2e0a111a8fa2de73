//! vessel-vmm: the built-in microVM monitor. Its library has the KVM core and the first
//! devices; booting a Linux guest is not there yet, so the shim uses the QEMU backend.

fn main() {
    eprintln!("vessel-vmm: booting Linux guests is not implemented yet; use hypervisor = \"qemu\"");
    std::process::exit(2);
}
