//! ferry.service proven live: the amd64 `.deb` installed in a booted Debian bookworm guest
//! (systemd 252 as PID 1, under qemu), uploading to this test's tus server on the host's loopback.
//! With `FERRY_VM_ARCH=arm64` or `armhf` (`scripts/vm-test --arch arm64|armhf|armhf-armv6`) the
//! same in an ARM guest (qemu's virt board, Cortex-A53 or Cortex-A7) with that `.deb`.
//!
//! One boot. `tests/vm/guest.sh` runs in the guest once it is up (hostrun.service, see
//! `tests/vm/configure-rootfs.sh`), drives ferry.service step by step and writes what it saw to a
//! 9p share; this test then asserts on those files and on what its tus server received:
//! - install: the package enables ferry.service and does not start it; `dpkg --verify` is clean;
//! - `Type=notify`: a start held before ferry runs (a drop-in wraps ExecStart= in a shell that
//!   stops itself, then execs ferry) stays `activating`, and `active` comes only after ferry
//!   ran and notified; the STATUS= line shows in `systemctl status`;
//! - hardening: from inside ferry's mount namespace, as root and as ferry, only the spool and
//!   /var/lib/ferry are writable (and the private /tmp, /var/tmp); the process has no
//!   capabilities, no_new_privs and a seccomp filter;
//! - `LoadCredential=`: the root-only /etc/ferry/auth-header, unreadable to user ferry, is the
//!   Authorization header of every request the server got;
//! - a spool file arrives byte-exact and is moved to done/ (spool.after_upload);
//! - the watchdog (shortened to 6 s by a drop-in): ferry pings, and a stopped (SIGSTOP) ferry
//!   is killed and restarted;
//! - upgrades, with packages repacked from the same binary (`dpkg-deb -R`, new Version, rebuilt):
//!   a running ferry is restarted on the new unit, an enabled but stopped one stays stopped, the
//!   admin's /etc/ferry/ferry.toml survives both;
//! - `systemd-analyze security` online stays under the limit the offline check uses;
//! - then (`vm/package.rs`) a disabled ferry upgraded to a package whose own ferry.toml
//!   changed, without a terminal: plain `dpkg -i` stops at the conffile question,
//!   `--force-confdef --force-confold` keeps the admin's file, and ferry stays disabled;
//!   `dpkg -r` stops a running ferry, `dpkg -P` deletes config and state but not the spool.
//!
//! The guest's network is qemu's user-mode NIC with `restrict=on`: its only way out is one
//! `guestfwd` (10.0.2.100:80) that runs `socat` to the server on 127.0.0.1.
//!
//! Besides those two drop-ins, both removed again, the guest runs the unit as packaged.
//!
//! `#[ignore]`d: `scripts/vm-test` builds the image and the package and runs it with
//! `-- --ignored`, setting the `FERRY_VM_*` variables read by [`Vm::from_env`]. Run with
//! `--ignored` but without them, the test fails and says what to set. `FERRY_VM_TIMEOUT`
//! (seconds, default 300) bounds the boot; the guest's files are kept on failure, and with
//! `FERRY_VM_KEEP=1` also on success.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{assert_same_bytes, random_bytes};
use crate::support::tus_server::{ServerConfig, TusServer};

mod package;
mod powercut;
use package::{check_conffile_upgrade, check_remove_and_purge, check_upgrades, repack, Change};

const HOW: &str = "set FERRY_VM_QEMU (qemu-system-x86_64), FERRY_VM_QEMU_DATA (its -L \
                   directories, colon-separated), FERRY_VM_IMAGE, FERRY_VM_KERNEL and \
                   FERRY_VM_INITRD (a Debian bookworm image with tests/vm/configure-rootfs.sh \
                   applied), FERRY_VM_DEB (dist/ferry_*_amd64.deb) and FERRY_VM_SOCAT, or run \
                   scripts/vm-test";

/// Where the guest reaches the tus server: the guestfwd address (port 80).
const GUEST_SERVER: &str = "10.0.2.100";

/// The same limit as the offline check in systemd_unit.rs (`EXPOSURE_LIMIT_TENTHS`).
const EXPOSURE_LIMIT: f64 = 2.0;

/// The Description= of the unit in the first upgrade package: seeing it after the upgrade
/// shows that the postinst reloaded systemd before restarting ferry.
const UPGRADED_DESCRIPTION: &str = "ferry spool uploader (upgrade check)";

/// What the test needs from the host, from `FERRY_VM_*` (set by scripts/vm-test).
struct Vm {
    /// The guest's Debian architecture (`FERRY_VM_ARCH`: amd64, the default, arm64 or armhf).
    arch: String,
    qemu: PathBuf,
    data_dirs: Vec<PathBuf>,
    image: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    deb: PathBuf,
    socat: PathBuf,
    timeout: Duration,
}

fn env_var(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{name} is not set: {HOW}"))
}

fn env_file(name: &str) -> PathBuf {
    let p = PathBuf::from(env_var(name));
    assert!(p.is_file(), "{name}={}: no such file", p.display());
    // qemu's option syntax splits on commas.
    assert!(
        !p.to_string_lossy().contains(','),
        "{name}={}: qemu cannot take a path with a comma",
        p.display()
    );
    p
}

impl Vm {
    fn from_env() -> Vm {
        let timeout = std::env::var("FERRY_VM_TIMEOUT").map_or(300, |t| {
            t.parse()
                .unwrap_or_else(|_| panic!("FERRY_VM_TIMEOUT={t}: not a number of seconds"))
        });
        let arch = std::env::var("FERRY_VM_ARCH").unwrap_or_else(|_| "amd64".into());
        assert!(
            ["amd64", "arm64", "armhf"].contains(&arch.as_str()),
            "FERRY_VM_ARCH={arch}: amd64, arm64 or armhf"
        );
        Vm {
            arch,
            qemu: env_file("FERRY_VM_QEMU"),
            data_dirs: env_var("FERRY_VM_QEMU_DATA")
                .split(':')
                .map(PathBuf::from)
                .collect(),
            image: env_file("FERRY_VM_IMAGE"),
            kernel: env_file("FERRY_VM_KERNEL"),
            initrd: env_file("FERRY_VM_INITRD"),
            deb: env_file("FERRY_VM_DEB"),
            socat: env_file("FERRY_VM_SOCAT"),
            timeout: Duration::from_secs(timeout),
        }
    }
}

#[test]
#[ignore = "boots a Debian guest under qemu: run scripts/vm-test"]
fn ferry_service_live_in_a_debian_guest() {
    let vm = Vm::from_env();
    let server = TusServer::start(ServerConfig::default());
    server.set_public_endpoint(&format!("http://{GUEST_SERVER}/files/"));
    let work = std::env::temp_dir().join(format!("ferry-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let share = Share::prepare(&vm, &work, server.addr().port());

    let wall = boot(&vm, &work, &share.dir, server.addr().port());
    let g = Guest::load(&share.dir.join("out"), &work);
    eprintln!(
        "vm: {} guest ({}), {}",
        vm.arch,
        g.facts.get("guest_machine").map_or("?", String::as_str),
        vm.deb.display()
    );
    print_figures(&g, wall);

    g.finished();
    g.expect(
        "guest_arch",
        &vm.arch,
        "the guest is of the architecture asked for",
    );
    check_install(&g);
    check_ready_gate(&g);
    check_status_lines(&g);
    check_hardening(&g);
    check_uploads(&g, &server, &share);
    check_watchdog(&g);
    check_upgrades(&g, &share);
    check_security(&g);
    check_conffile_upgrade(&g, &share);
    check_remove_and_purge(&g);
    // Kept on failure (the messages name it) or with FERRY_VM_KEEP=1.
    if std::env::var_os("FERRY_VM_KEEP").is_none() {
        std::fs::remove_dir_all(&work).unwrap();
    } else {
        eprintln!("vm: guest files kept in {}", work.display());
    }
}

/// The 9p share: the guest script, the packages, the admin's files and the spool files.
struct Share {
    dir: PathBuf,
    token: String,
    cam1: Vec<u8>,
    cam2: Vec<u8>,
    versions: [String; 4],
}

impl Share {
    fn prepare(vm: &Vm, work: &Path, server_port: u16) -> Share {
        let dir = work.join("share");
        std::fs::create_dir_all(dir.join("out")).unwrap();
        let guest_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/guest.sh");
        std::fs::copy(&guest_script, dir.join("run.sh")).unwrap();
        std::fs::write(dir.join("server-port"), format!("{server_port}\n")).unwrap();
        let probe_dirs: Vec<&str> = PROBES.iter().map(|(d, _)| *d).collect();
        std::fs::write(dir.join("probe-dirs"), probe_dirs.join("\n") + "\n").unwrap();

        let arch = deb_field(&vm.deb, "Architecture");
        assert_eq!(
            arch,
            vm.arch,
            "{}: not the {} package",
            vm.deb.display(),
            vm.arch
        );
        let v1 = deb_field(&vm.deb, "Version");
        let versions = [
            v1.clone(),
            format!("{v1}+vm2"),
            format!("{v1}+vm3"),
            format!("{v1}+vm4"),
        ];
        std::fs::copy(&vm.deb, dir.join("ferry_1.deb")).unwrap();
        repack(
            &vm.deb,
            &work.join("repack2"),
            &dir.join("ferry_2.deb"),
            &versions[1],
            Change::Description(UPGRADED_DESCRIPTION),
        );
        repack(
            &vm.deb,
            &work.join("repack3"),
            &dir.join("ferry_3.deb"),
            &versions[2],
            Change::Nothing,
        );
        repack(
            &vm.deb,
            &work.join("repack4"),
            &dir.join("ferry_4.deb"),
            &versions[3],
            Change::ConffileLine(package::CONFFILE_LINE),
        );

        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let token: String = random_bytes(16, seed)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let token = format!("Bearer vm-{token}");
        // A trailing newline, as an admin's editor leaves it: ferry must strip it.
        std::fs::write(dir.join("auth-header"), format!("{token}\n")).unwrap();
        std::fs::write(dir.join("ferry.toml"), guest_config()).unwrap();
        // Several 1 MiB chunks, and a size that is no multiple of anything.
        let cam1 = random_bytes(3 * 1024 * 1024 + 4099, seed ^ 1);
        let cam2 = random_bytes(300_007, seed ^ 2);
        std::fs::write(dir.join("cam1.bin"), &cam1).unwrap();
        std::fs::write(dir.join("cam2.bin"), &cam2).unwrap();
        Share {
            dir,
            token,
            cam1,
            cam2,
            versions,
        }
    }
}

/// The admin's /etc/ferry/ferry.toml in the guest (it replaces the packaged example, so dpkg
/// sees an edited conffile).
fn guest_config() -> String {
    format!(
        r#"# Written by the admin (tests/it/vm.rs).
state_dir = "/var/lib/ferry"

[server]
endpoint = "http://{GUEST_SERVER}/files/"
header_files = {{ Authorization = "credential:auth-header" }}
connect_timeout = "10s"
idle_timeout = "20s"

[upload]
chunk_size = "1MiB"

[retry]
initial_delay = "500ms"
max_delay = "5s"

[spool]
dir = "/var/spool/ferry"
settle_time = "2s"
after_upload = "move:/var/spool/ferry/done"
failed_dir = "/var/spool/ferry/failed"
"#
    )
}

fn deb_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .unwrap_or_else(|e| panic!("dpkg-deb: {e} (install dpkg)"));
    assert!(
        out.status.success(),
        "dpkg-deb -f {}: {out:?}",
        deb.display()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Kills qemu if the test ends early, so a failed test never leaves a guest running.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the guest's disk is attached.
#[derive(Clone, Copy)]
enum Disk<'a> {
    /// The pristine image with `snapshot=on`: writes go to a temporary overlay, the image stays
    /// as it is.
    Pristine,
    /// A raw image of the guest's own (a copy of the pristine one), `cache=writeback`: what the
    /// guest wrote back survives a `kill -9` of qemu, what was only in its page cache does not,
    /// as on a device whose power is cut.
    Persistent(&'a Path),
}

/// Where a boot's serial console and qemu's stderr go.
struct BootLogs {
    serial: PathBuf,
    stderr: PathBuf,
}

impl BootLogs {
    fn in_dir(dir: &Path, name: &str) -> BootLogs {
        BootLogs {
            serial: dir.join(format!("{name}.serial.log")),
            stderr: dir.join(format!("{name}.qemu-stderr.log")),
        }
    }
}

/// qemu's command line for one boot: TCG, the kernel and initrd given directly, `disk`, `share`
/// as the 9p share tagged `host` (hostrun.service runs its run.sh and then powers off), and a
/// NIC whose only way out is the guestfwd to the tus server on 127.0.0.1:`server_port`.
fn qemu_command(vm: &Vm, logs: &BootLogs, share: &Path, server_port: u16, disk: Disk) -> Command {
    let mut cmd = Command::new(&vm.qemu);
    for d in &vm.data_dirs {
        cmd.arg("-L").arg(d);
    }
    // TCG: KVM on these hosts cannot run a stock kernel.
    // ARM: qemu's virt board with a Pi 3's CPU (Pi 2's for a 32-bit OS), its PL011 UART as
    // the console.
    let (machine, console): (&[&str], &str) = match vm.arch.as_str() {
        "arm64" => (&["-M", "virt", "-cpu", "cortex-a53"], "ttyAMA0"),
        "armhf" => (&["-M", "virt", "-cpu", "cortex-a7"], "ttyAMA0"),
        _ => (&["-cpu", "max"], "ttyS0"),
    };
    let drive = match disk {
        Disk::Pristine => format!(
            "file={},if=virtio,format=raw,snapshot=on",
            vm.image.display()
        ),
        Disk::Persistent(image) => format!(
            "file={},if=virtio,format=raw,cache=writeback",
            image.display()
        ),
    };
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(machine)
        .args(["-accel", "tcg,thread=multi", "-smp", "2", "-m", "512M"])
        .arg("-serial")
        .arg(format!("file:{}", logs.serial.display()))
        .arg("-kernel")
        .arg(&vm.kernel)
        .arg("-initrd")
        .arg(&vm.initrd)
        .arg("-append")
        .arg(format!(
            "root=/dev/vda rw console={console} panic=-1 net.ifnames=0 quiet hostrun=1 hostrun_poweroff=1"
        ))
        .arg("-drive")
        .arg(drive)
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=host,security_model=none,id=host",
            share.display()
        ))
        // restrict=on: the guest reaches nothing (not the host, not the outside) but the
        // guestfwd, which runs one socat per connection to the tus server on loopback.
        .arg("-netdev")
        .arg(format!(
            "user,id=net0,restrict=on,ipv6=off,guestfwd=tcp:{GUEST_SERVER}:80-cmd:{} - TCP:127.0.0.1:{server_port}",
            vm.socat.display()
        ))
        // romfile=: no PXE option ROM (the kernel is loaded directly).
        .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logs.stderr).unwrap());
    cmd
}

/// Starts qemu; the returned guard kills it (SIGKILL) when dropped.
fn start_guest(cmd: &mut Command, vm: &Vm) -> Qemu {
    Qemu(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", vm.qemu.display())),
    )
}

/// Waits for the guest to power off (qemu exits 0), calling `tick` every 250 ms, and returns
/// the time since `start`. A guest still running `vm.timeout` after `start` fails the test with
/// its serial log and `run_log`.
fn wait_poweroff(
    vm: &Vm,
    mut qemu: Qemu,
    start: Instant,
    logs: &BootLogs,
    run_log: &Path,
    work: &Path,
    mut tick: impl FnMut(),
) -> Duration {
    let status = loop {
        if let Some(status) = qemu.0.try_wait().unwrap() {
            break status;
        }
        tick();
        if start.elapsed() > vm.timeout {
            drop(qemu);
            panic!(
                "the guest did not power off within {} s (FERRY_VM_TIMEOUT); serial console:\n{}\n\
                 guest's log:\n{}\n(files kept in {})",
                vm.timeout.as_secs(),
                tail(&logs.serial, 40),
                tail(run_log, 40),
                work.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        status.success(),
        "qemu exited with {status}:\n{}\nserial console:\n{}",
        tail(&logs.stderr, 20),
        tail(&logs.serial, 40)
    );
    start.elapsed()
}

/// Boots the pristine image (snapshot) with `share` as its 9p share and waits for it to power
/// off; returns the wall time.
fn boot(vm: &Vm, work: &Path, share: &Path, server_port: u16) -> Duration {
    let logs = BootLogs {
        serial: work.join("serial.log"),
        stderr: work.join("qemu.stderr"),
    };
    let mut cmd = qemu_command(vm, &logs, share, server_port, Disk::Pristine);
    let start = Instant::now();
    let qemu = start_guest(&mut cmd, vm);
    wait_poweroff(
        vm,
        qemu,
        start,
        &logs,
        &share.join("out/run.log"),
        work,
        || {},
    )
}

/// The last `n` lines of a text file, or why there are none.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// What the guest wrote to the share's out/ directory.
struct Guest {
    out: PathBuf,
    work: PathBuf,
    facts: BTreeMap<String, String>,
}

impl Guest {
    fn load(out: &Path, work: &Path) -> Guest {
        let text = std::fs::read_to_string(out.join("facts")).unwrap_or_default();
        let facts = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Guest {
            out: out.to_path_buf(),
            work: work.to_path_buf(),
            facts,
        }
    }

    /// For failure messages: the end of guest.sh's log if it stopped early, else the end of
    /// ferry's journal; and where all the guest's files are.
    fn context(&self) -> String {
        let (name, file) = if self.facts.contains_key("finished") {
            ("ferry's journal", "journal-ferry.txt")
        } else {
            ("guest.sh's log", "run.log")
        };
        format!(
            "{name} (end):\n{}\n(all the guest's files are in {})",
            tail(&self.out.join(file), 25),
            self.work.display()
        )
    }

    fn fact(&self, key: &str) -> &str {
        self.facts.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "the guest recorded no {key}: guest.sh stopped early?\n{}",
                self.context()
            )
        })
    }

    fn num(&self, key: &str) -> u64 {
        let v = self.fact(key);
        v.parse()
            .unwrap_or_else(|_| panic!("{key}={v:?}: not a number\n{}", self.context()))
    }

    /// Asserts that fact `key` is `want`; `what` says what that proves.
    fn expect(&self, key: &str, want: &str, what: &str) {
        let got = self.fact(key);
        assert_eq!(got, want, "{what} ({key})\n{}", self.context());
    }

    fn file(&self, name: &str) -> String {
        let p = self.out.join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: guest.sh stopped early?\n{}",
                p.display(),
                self.context()
            )
        })
    }

    fn finished(&self) {
        let rc = std::fs::read_to_string(self.out.parent().unwrap().join("run.rc"))
            .unwrap_or_else(|_| "(none)".into());
        assert_eq!(rc.trim(), "0", "guest.sh's exit status\n{}", self.context());
        self.expect("finished", "yes", "guest.sh ran to its end");
    }
}

/// Prints the measured figures before any assertion, so a failed run still shows them.
fn print_figures(g: &Guest, wall: Duration) {
    let get = |k: &str| g.facts.get(k).and_then(|v| v.parse::<u64>().ok());
    let secs = |ms: Option<u64>| ms.map_or("?".into(), |ms| format!("{:.1} s", ms as f64 / 1e3));
    let boot = std::fs::read_to_string(g.out.join("boot-time.txt")).unwrap_or_default();
    let to_active = get("start_active_enter_us")
        .zip(get("start_exec_main_start_us"))
        .map(|(a, s)| a.saturating_sub(s) / 1000);
    eprintln!("vm: qemu start to power-off: {:.1} s", wall.as_secs_f64());
    eprintln!(
        "vm: guest boot: {} (guest.sh started at uptime {})",
        boot.lines().next().unwrap_or("?").trim(),
        secs(get("boot_uptime_ms"))
    );
    eprintln!(
        "vm: ferry.service start to active: {} ms (`systemctl restart` took {} ms)",
        to_active.map_or("?".into(), |v| v.to_string()),
        get("restart_wall_ms").map_or("?".into(), |v| v.to_string())
    );
    eprintln!(
        "vm: cam1.bin (3 MiB) dropped to moved: {}; watchdog: stopped to restarted: {}",
        secs(get("cam1_ms")),
        secs(get("wd_restart_ms"))
    );
    eprintln!(
        "vm: systemd-analyze security (online): {}",
        exposure(g).map_or("?".into(), |e| e.to_string())
    );
}

fn exposure(g: &Guest) -> Option<f64> {
    std::fs::read_to_string(g.out.join("security.txt"))
        .ok()?
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ferry.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
}

fn check_install(g: &Guest) {
    g.expect("install_rc", "0", "dpkg -i of the package");
    g.expect(
        "install_enabled",
        "enabled",
        "installation enables ferry.service",
    );
    g.expect(
        "install_active",
        "inactive",
        "installation does not start ferry (its config needs an endpoint first)",
    );
    assert!(
        g.num("install_md5sums_lines") >= 5,
        "the package lists its files' md5sums\n{}",
        g.context()
    );
    g.expect(
        "install_verify_lines",
        "0",
        "dpkg --verify ferry finds the installed files as packaged (dpkg-verify.txt)",
    );
    assert_ne!(
        g.fact("auth_read_as_ferry_rc"),
        "0",
        "user ferry can read the root-only /etc/ferry/auth-header, so the credential test \
         proves nothing\n{}",
        g.context()
    );
    assert_ne!(
        g.fact("net_host_loopback_rc"),
        "0",
        "the guest reached the host's loopback through 10.0.2.2: the NIC is not restricted"
    );
}

/// `Type=notify`: systemd must wait for READY=1, not for the process to exist.
fn check_ready_gate(g: &Guest) {
    g.expect("held_stopped", "0", "the held start's shell stopped itself");
    g.expect(
        "held_comm",
        "sh",
        "while held, ferry had not been executed yet",
    );
    g.expect(
        "held_active_state",
        "activating",
        "while the main process exists but ferry has not run, the unit is not active",
    );
    g.expect("held_sub_state", "start", "while held, the start job waits");
    g.expect("held_status_text", "", "no STATUS= before ferry runs");
    g.expect("released_active", "0", "released, ferry becomes active");
    g.expect(
        "released_main_pid",
        g.fact("held_pid"),
        "the shell exec'd ferry: same main PID (NotifyAccess=main admits it)",
    );
    g.expect("released_comm", "ferry", "the main process is ferry");
    let forked = g.num("held_exec_main_start_us");
    let active = g.num("released_active_enter_us");
    assert!(
        active >= forked + 3_000_000,
        "the unit became active {} ms after the fork, less than the 3 s it was held: systemd \
         did not wait for READY=1\n{}",
        (active.saturating_sub(forked)) / 1000,
        g.context()
    );
    assert!(
        g.fact("released_status_text").starts_with("running: "),
        "ferry's STATUS= (sent with READY=1) is not in StatusText: {:?}\n{}",
        g.fact("released_status_text"),
        g.context()
    );
    g.expect(
        "restart_rc",
        "0",
        "systemctl restart with the packaged unit",
    );
    assert!(
        g.num("start_active_enter_us") > g.num("start_exec_main_start_us"),
        "active before the fork?\n{}",
        g.context()
    );
}

/// ferry's STATUS= line as `systemctl status` shows it.
fn check_status_lines(g: &Guest) {
    for (file, want) in [
        (
            "status-started.txt",
            "Status: \"running: 0 queued, 0 active, 0 done, 0 failed\"",
        ),
        (
            "status-uploaded.txt",
            "Status: \"running: 0 queued, 0 active, 1 done, 0 failed\"",
        ),
    ] {
        let text = g.file(file);
        assert!(
            text.lines().any(|l| l.trim() == want),
            "`systemctl status ferry` ({file}) lacks {want}:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.trim().starts_with("Active: active (running)")),
            "{file}: not active (running):\n{text}"
        );
    }
    g.expect(
        "cam1_status_1_done",
        "0",
        "StatusText counts the upload as done",
    );
}

/// What a write may do from inside ferry's mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Writable, and the file is the real one (seen from outside the namespace).
    Shared,
    /// Writable, but private to the service (PrivateTmp=): not seen outside.
    Private,
    /// The write fails.
    Denied,
}

/// Where guest.sh tries to write (file probe-dirs), and what must happen, as root and as ferry:
/// the spool and the state directory are the only shared places ferry can write to.
const PROBES: &[(&str, Access)] = &[
    ("/", Access::Denied),
    ("/etc", Access::Denied),
    ("/etc/ferry", Access::Denied),
    ("/usr/bin", Access::Denied),
    ("/usr/lib", Access::Denied),
    ("/boot", Access::Denied),
    ("/opt", Access::Denied),
    ("/srv", Access::Denied),
    ("/root", Access::Denied),
    ("/home", Access::Denied),
    ("/var/log", Access::Denied),
    ("/var/cache", Access::Denied),
    ("/var/lib", Access::Denied),
    ("/var/spool", Access::Denied),
    ("/var/spool/ferry", Access::Shared),
    ("/var/spool/ferry/done", Access::Shared),
    ("/var/spool/ferry/failed", Access::Shared),
    ("/var/lib/ferry", Access::Shared),
    ("/tmp", Access::Private),
    ("/var/tmp", Access::Private),
    ("/run", Access::Denied),
    ("/run/lock", Access::Denied),
    ("/dev", Access::Denied),
    ("/dev/shm", Access::Denied),
    ("/dev/mqueue", Access::Denied),
    ("/dev/hugepages", Access::Denied),
];

fn check_hardening(g: &Guest) {
    let probes = g.file("probes.txt");
    let mut results = BTreeMap::new();
    for line in probes.lines() {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        let [who, dir, outcome, err] = f[..] else {
            panic!("probes.txt: bad line {line:?}")
        };
        let got = match outcome {
            "0/yes" => Access::Shared,
            "0/no" => Access::Private,
            o if !o.starts_with("0/") && o.ends_with("/no") => Access::Denied,
            o => panic!("probes.txt: {who} {dir}: impossible outcome {o} (failed, yet written?)"),
        };
        results.insert((who.to_string(), dir.to_string()), (got, err.to_string()));
    }
    let mut wrong = Vec::new();
    for who in ["root", "ferry"] {
        for (dir, want) in PROBES {
            match results.remove(&(who.to_string(), dir.to_string())) {
                Some((got, _)) if got == *want => {}
                Some((got, err)) => {
                    wrong.push(format!("as {who}: {dir}: {got:?}, want {want:?} {err}"))
                }
                None => wrong.push(format!("as {who}: {dir}: not probed")),
            }
        }
    }
    assert!(
        wrong.is_empty() && results.is_empty(),
        "writes from inside ferry's mount namespace:\n{}\nall probes:\n{probes}",
        wrong.join("\n")
    );

    let status = g.file("proc-status.txt");
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("/proc/PID/status has no {name}:\n{status}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let uid = g.fact("ferry_uid");
    assert_eq!(
        field("Uid"),
        [uid; 4],
        "ferry runs as user ferry:\n{status}"
    );
    assert!(
        field("Groups").iter().any(|gid| gid == g.fact("spool_gid")),
        "ferry has the group ferry-spool (SupplementaryGroups=):\n{status}"
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            field(cap),
            ["0000000000000000"],
            "{cap}: ferry has capabilities:\n{status}"
        );
    }
    assert_eq!(field("NoNewPrivs"), ["1"], "NoNewPrivileges=:\n{status}");
    assert_eq!(
        field("Seccomp"),
        ["2"],
        "SystemCallFilter= (seccomp filter mode):\n{status}"
    );
}

fn check_uploads(g: &Guest, server: &TusServer, share: &Share) {
    for (name, bytes) in [("cam1.bin", &share.cam1), ("cam2.bin", &share.cam2)] {
        let key = name.trim_end_matches(".bin");
        g.expect(
            &format!("{key}_moved"),
            "0",
            &format!("{name} left the spool for done/ (spool.after_upload = move:)"),
        );
        g.expect(
            &format!("{key}_done_same"),
            "0",
            &format!("done/{name} is the file dropped in the spool"),
        );
        let uploads: Vec<_> = server
            .uploads()
            .into_iter()
            .filter(|u| {
                u.metadata
                    .iter()
                    .any(|(k, v)| k == "filename" && v.as_deref() == Some(name))
            })
            .collect();
        assert_eq!(
            uploads.len(),
            1,
            "uploads of {name} on the server: {uploads:?}"
        );
        let u = &uploads[0];
        assert_eq!(
            (u.offset, u.length),
            (bytes.len() as u64, bytes.len() as u64),
            "{name}: the server does not hold all of it"
        );
        assert_same_bytes(&server.upload_bytes(&u.id), bytes, name);
    }
    let requests = server.requests();
    assert!(
        requests.iter().filter(|r| r.method == "PATCH").count() >= 4,
        "cam1.bin (3 MiB + 4099 bytes in 1 MiB chunks) needs 4 PATCHes: {requests:?}"
    );
    let unauthorized: Vec<_> = requests
        .iter()
        .filter(|r| r.header("authorization") != Some(share.token.as_str()))
        .map(|r| {
            format!(
                "{} {} Authorization: {:?}",
                r.method,
                r.path,
                r.header("authorization")
            )
        })
        .collect();
    assert!(
        unauthorized.is_empty(),
        "requests without the LoadCredential= token {:?}:\n{}",
        share.token,
        unauthorized.join("\n")
    );
}

fn check_watchdog(g: &Guest) {
    g.expect(
        "wd_watchdog_usec",
        "6s",
        "the drop-in's WatchdogSec= applies",
    );
    assert!(
        g.num("wd_alive_ms") >= 12_000,
        "ferry ran less than 2 watchdog periods before it was stopped"
    );
    g.expect(
        "wd_pid_alive",
        g.fact("wd_pid1"),
        "a running ferry pings the watchdog: not killed in 2 periods",
    );
    g.expect(
        "wd_nrestarts_alive",
        g.fact("wd_nrestarts1"),
        "no restart while ferry pings",
    );
    g.expect(
        "wd_restarted",
        "0",
        "a stopped ferry is replaced by a new one",
    );
    assert_ne!(g.fact("wd_pid2"), g.fact("wd_pid1"), "{}", g.context());
    g.expect("wd_pid1_alive", "no", "the hung ferry was killed");
    assert_eq!(
        g.num("wd_nrestarts2"),
        g.num("wd_nrestarts1") + 1,
        "one automatic restart (NRestarts)\n{}",
        g.context()
    );
    let journal = g.file("journal-ferry.txt");
    for want in [
        "Watchdog timeout (limit 6s)!",
        "with signal SIGABRT",
        "Failed with result 'watchdog'",
    ] {
        assert!(
            journal.contains(want),
            "the journal lacks {want:?}:\n{journal}"
        );
    } // The unit's sandbox lets the network watcher listen (AF_NETLINK): it once did not, and
      // network changes went unnoticed without a word.
    assert!(
        !journal.contains("no network change events"),
        "the network watcher could not listen under the unit:\n{journal}"
    );
}

fn check_security(g: &Guest) {
    g.expect("security_rc", "0", "systemd-analyze security ferry.service");
    let score = exposure(g).unwrap_or_else(|| {
        panic!(
            "no exposure level in security.txt:\n{}",
            g.file("security.txt")
        )
    });
    assert!(
        score <= EXPOSURE_LIMIT,
        "exposure {score} in the guest is above {EXPOSURE_LIMIT}:\n{}",
        g.file("security.txt")
    );
}
