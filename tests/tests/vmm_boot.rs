//! The vessel-vmm binary end to end on tiny kernels (this machine's KVM runs only tiny
//! guests): it loads a PVH ELF through its note and enters it in 32-bit protected mode, and
//! an ELF without the note or a bzImage at its 64-bit entry with the zero page; it puts
//! the guest's serial output on stdout, exits with the guest's power-off or reset status, and
//! obeys its control socket. Skipped, with the reason, where /dev/kvm cannot be opened.

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vessel_tests::cri::workspace_binary;
use vessel_tests::tiny_elf::{
    bzimage, elf64, pvh_elf, CHECK_ZERO_PAGE_THEN_POWER_OFF, PRINT_BANG, PRINT_THEN_POWER_OFF,
    PRINT_THEN_RESET,
};

fn vmm(test: &str) -> Option<std::path::PathBuf> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        vessel_tests::skipped(test, &format!("/dev/kvm: {e}"));
        return None;
    }
    let vmm = workspace_binary("vessel-vmm");
    assert!(
        vmm.is_file(),
        "{} missing: cargo build --workspace --bins",
        vmm.display()
    );
    Some(vmm)
}

#[test]
fn tiny_pvh_kernel_prints_on_the_serial_console() {
    let test = "tiny_pvh_kernel_prints_on_the_serial_console";
    let Some(vmm) = vmm(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, pvh_elf(PRINT_BANG)).unwrap();
    let uds = dir.path().join("vsock.sock");
    let mut child = Command::new(vmm)
        .args(["--kernel", kernel.to_str().unwrap(), "--memory-mib", "16"])
        .args(["--vsock-uds", uds.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        stdout.read_exact(&mut byte).map(|_| byte[0])
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The guest halts forever after printing: the VMM keeps running until killed, its
    // hybrid vsock socket accepting host clients.
    let still_running = child.try_wait().unwrap().is_none();
    let vsock_listening = std::os::unix::net::UnixStream::connect(&uds).is_ok();
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        reader.is_finished(),
        "no console output in 10 s; stderr: {stderr}"
    );
    assert_eq!(reader.join().unwrap().unwrap(), b'!', "stderr: {stderr}");
    assert!(
        still_running,
        "vessel-vmm exited early ({status}): {stderr}"
    );
    assert!(
        vsock_listening,
        "no hybrid vsock socket at {}",
        uds.display()
    );
}

#[test]
fn power_off_and_reset_end_the_vmm_with_their_status() {
    let test = "power_off_and_reset_end_the_vmm_with_their_status";
    let Some(vmm) = vmm(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("reset.elf");
    std::fs::write(&kernel, pvh_elf(PRINT_THEN_RESET)).unwrap();
    let console = dir.path().join("console.log");
    let out = Command::new(&vmm)
        .args(["--kernel", kernel.to_str().unwrap(), "--memory-mib", "16"])
        .args(["--console", console.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(std::fs::read(&console).unwrap(), b"!");

    // A power-off through the ACPI sleep control register ends it with 0.
    let kernel_off = dir.path().join("off.elf");
    std::fs::write(&kernel_off, pvh_elf(PRINT_THEN_POWER_OFF)).unwrap();
    // With three vCPUs: the other two wait for the guest's INIT/SIPI on their threads.
    let out = Command::new(&vmm)
        .args(["--kernel", kernel_off.to_str().unwrap()])
        .args(["--memory-mib", "16", "--vcpus", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"!");

    // With a virtio-net device on a tap, made in a network namespace of its own.
    let out = Command::new("unshare")
        .arg("--net")
        .arg(&vmm)
        .args([
            "--kernel",
            kernel_off.to_str().unwrap(),
            "--memory-mib",
            "16",
        ])
        .args(["--tap", "vtap%d", "--mac", "02:00:00:00:00:01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for (flags, named) in [
        (["--tap-fd", "99"], "--tap-fd 99"),
        (["--mac", "1:2:3"], "--mac"),
    ] {
        let out = Command::new(&vmm)
            .args(["--kernel", kernel_off.to_str().unwrap()])
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(named),
            "{out:?}"
        );
    }

    // Bad input: a file that is no ELF, and too little memory, are errors that say so.
    let out = Command::new(&vmm)
        .args(["--kernel", console.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("console.log"), "{stderr}");
    let out = Command::new(&vmm)
        .args(["--kernel", kernel.to_str().unwrap(), "--memory-mib", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory-mib"));
    // A bad flag is status 1 too: 2 would read as a guest reset.
    let out = Command::new(&vmm)
        .args(["--kernel", kernel.to_str().unwrap(), "--vcpus", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vcpus"));
    let out = Command::new(&vmm)
        .args(["--kernel", kernel.to_str().unwrap(), "--memory-mib", "16"])
        .args(["--disk", "/nonexistent/disk.img"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/disk.img"));
}

#[test]
fn the_control_socket_pauses_resumes_and_shuts_down() {
    let test = "the_control_socket_pauses_resumes_and_shuts_down";
    let Some(vmm) = vmm(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, pvh_elf(PRINT_BANG)).unwrap();
    let api = dir.path().join("api.sock");
    let mut child = Command::new(vmm)
        .args(["--kernel", kernel.to_str().unwrap(), "--memory-mib", "16"])
        .args(["--api-sock", api.to_str().unwrap(), "--vcpus", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(&api) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no control socket: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = std::io::BufReader::new(stream.try_clone().unwrap()).lines();
    let mut ask = |command: &str| {
        (&stream)
            .write_all(format!("{command}\n").as_bytes())
            .unwrap();
        lines.next().unwrap().unwrap()
    };
    let info = ask("info");
    assert!(info.contains(r#""state":"running""#), "{info}");
    assert!(info.contains(r#""vcpus":2"#), "{info}");
    // The guest's one port write to COM1 is among the vCPU exits counted.
    let metrics: serde_json::Value = serde_json::from_str(&ask("metrics")).unwrap();
    let io = &metrics["metrics"]["vcpu_exits"]["io"];
    assert!(io.as_u64().is_some_and(|n| n > 0), "{metrics}");
    // vCPU 0 sits in HLT inside KVM, vCPU 1 waits for a SIPI there: pausing must kick
    // both out of KVM_RUN.
    assert_eq!(ask("pause"), r#"{"ok":true,"state":"paused"}"#);
    assert!(ask("info").contains(r#""state":"paused""#));
    assert_eq!(ask("resume"), r#"{"ok":true,"state":"running"}"#);
    let unknown: serde_json::Value = serde_json::from_str(&ask("bogus \"x\"")).unwrap();
    assert_eq!(unknown["ok"], false, "{unknown}");
    assert_eq!(ask("shutdown"), r#"{"ok":true,"state":"shutting-down"}"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("vessel-vmm did not exit after shutdown");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn elf_without_pvh_note_and_bzimage_start_at_their_64_bit_entry() {
    let test = "elf_without_pvh_note_and_bzimage_start_at_their_64_bit_entry";
    let Some(vmm) = vmm(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, vec![0x5a; 8192]).unwrap();
    // 5000 MiB: RAM continues above the 32-bit MMIO hole, from 4 GiB.
    for (name, image, memory_mib) in [
        ("vmlinux64", elf64(CHECK_ZERO_PAGE_THEN_POWER_OFF), "64"),
        ("bzImage", bzimage(CHECK_ZERO_PAGE_THEN_POWER_OFF), "64"),
        (
            "bzImage-5g",
            bzimage(CHECK_ZERO_PAGE_THEN_POWER_OFF),
            "5000",
        ),
    ] {
        let kernel = dir.path().join(name);
        std::fs::write(&kernel, image).unwrap();
        // The guest checks %rsi points at the zero page, then powers off (status 0).
        let out = Command::new(&vmm)
            .args([
                "--kernel",
                kernel.to_str().unwrap(),
                "--memory-mib",
                memory_mib,
            ])
            .args(["--initrd", initrd.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"!", "{name}: {out:?}");
        assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
    }

    // A bzImage without a 64-bit entry is refused by name.
    let mut old = bzimage(CHECK_ZERO_PAGE_THEN_POWER_OFF);
    old[0x236] = 0; // no XLF_KERNEL_64
    let kernel = dir.path().join("bzImage-32");
    std::fs::write(&kernel, old).unwrap();
    let out = Command::new(&vmm)
        .args(["--kernel", kernel.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("64-bit entry"),
        "{out:?}"
    );
}
