//! The CPU topology a guest sees in CPUID: `count` vCPUs as single-threaded cores of one
//! package, each with its own APIC id. KVM's supported CPUID describes the host's topology
//! (or none); these leaves are rewritten so the guest kernel numbers its CPUs as the MADT
//! does.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:EDX.HTT: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// CPUID.1:ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.0xB/0x1F:ECX level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits of an APIC id that number `count` cores.
fn core_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

/// Rewrites `entry` for vCPU `apic_id` of `count`.
pub fn apply(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32) {
    let count = count.max(1);
    match entry.function {
        0x1 => {
            entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
            entry.ecx |= ECX_HYPERVISOR;
        }
        0x4 => {
            // Cores per package - 1 in bits 31:26; logical processors sharing the cache - 1
            // in bits 25:14: one for L1 and L2, all for L3.
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((count - 1) << 26);
        }
        // AMD's extended APIC id, and the core id (one thread per core, one node).
        0x8000_001e => {
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xff;
            entry.ecx = 0;
        }
        0xb | 0x1f => {
            let (eax, ebx, level) = match entry.index {
                0 => (0, 1, LEVEL_SMT),
                1 => (core_bits(count), count, LEVEL_CORE),
                _ => (0, 0, 0),
            };
            entry.eax = eax;
            entry.ebx = ebx;
            entry.ecx = (level << 8) | (entry.index & 0xff);
            entry.edx = apic_id;
        }
        _ => {}
    }
}

/// Rewrites every entry of `cpuid` for vCPU `apic_id` of `count`, adding the core level
/// of leaf 0xB where the host's leaf has only the thread level.
pub fn apply_all(
    cpuid: &mut CpuId,
    apic_id: u32,
    count: u32,
) -> Result<(), vmm_sys_util::fam::Error> {
    let has = |cpuid: &CpuId, index| {
        cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 0xb && e.index == index)
    };
    if has(cpuid, 0) && !has(cpuid, 1) {
        cpuid.push(kvm_cpuid_entry2 {
            function: 0xb,
            index: 1,
            flags: kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        })?;
    }
    for entry in cpuid.as_mut_slice() {
        apply(entry, apic_id, count);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_carries_the_apic_id_and_count() {
        let mut e = leaf(0x1, 0);
        apply(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0xffff, "other fields kept");
        assert_ne!(e.edx & EDX_HTT, 0);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        let mut one = leaf(0x1, 0);
        one.edx = EDX_HTT;
        apply(&mut one, 0, 1);
        assert_eq!(one.edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_has_an_smt_and_a_core_level() {
        let mut smt = leaf(0xb, 0);
        let mut core = leaf(0xb, 1);
        let mut end = leaf(0xb, 2);
        for e in [&mut smt, &mut core, &mut end] {
            apply(e, 5, 6);
            assert_eq!(e.edx, 5);
        }
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        assert_eq!((core.eax, core.ebx, core.ecx), (3, 6, 0x201));
        assert_eq!((end.eax, end.ebx, end.ecx >> 8), (0, 0, 0));
    }

    #[test]
    fn a_missing_core_level_is_added_and_amd_ids_are_set() {
        let mut cpuid = CpuId::from_entries(&[leaf(0xb, 0), leaf(0x8000_001e, 0)]).unwrap();
        apply_all(&mut cpuid, 2, 4).unwrap();
        let entries = cpuid.as_slice();
        let core = entries
            .iter()
            .find(|e| e.function == 0xb && e.index == 1)
            .expect("core level added");
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 4, 2, 2));
        let amd = entries.iter().find(|e| e.function == 0x8000_001e).unwrap();
        assert_eq!((amd.eax, amd.ebx & 0xff, amd.ecx), (2, 2, 0));
        // Present already: not added twice.
        apply_all(&mut cpuid, 2, 4).unwrap();
        assert_eq!(cpuid.as_slice().len(), 3);
    }

    #[test]
    fn cache_leaves_count_the_cores_sharing_them() {
        let mut l1 = leaf(0x4, 0);
        l1.eax = 1 << 5;
        let mut l3 = leaf(0x4, 3);
        l3.eax = 3 << 5;
        apply(&mut l1, 0, 8);
        apply(&mut l3, 0, 8);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (7, 0));
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (7, 7));
        assert_eq!(core_bits(1), 0);
        assert_eq!(core_bits(2), 1);
        assert_eq!(core_bits(5), 3);
    }
}
