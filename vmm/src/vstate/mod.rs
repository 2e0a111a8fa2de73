//! The KVM state of one microVM: the VM (with the guest memory registered) and its vCPUs. Every KVM ioctl that
//! needs `unsafe` lives here.

pub mod msr;
pub mod topology;
pub mod vcpu;
pub mod vm;

/// Opens `/dev/kvm` and checks the API version, or says why KVM cannot be used.
pub fn open_kvm() -> Result<kvm_ioctls::Kvm, vm::VmError> {
    let kvm = kvm_ioctls::Kvm::new().map_err(vm::VmError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(vm::VmError::ApiVersion(version));
    }
    Ok(kvm)
}
