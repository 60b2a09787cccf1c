//! `kubeadm` stand-in (see `kubesim::kubeadm`). Needs `KUBESIM_ROOT` and `KUBESIM_CLUSTER`;
//! `KUBESIM_VERSION` (default `v1.33.1`) is the version it is. With `KUBESIM_BIN` set it starts
//! the kubelet through the `systemctl` in `PATH`, as kubeadm does.

use std::process::ExitCode;

/// The first executable `name` in `PATH`.
fn in_path(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    })
}

fn main() -> ExitCode {
    let node = match kubesim::env::NodeEnv::from_env() {
        Ok(env) => env,
        Err(err) => {
            eprintln!("kubeadm (kubesim stand-in): {err}");
            return ExitCode::from(1);
        }
    };
    let env = kubesim::kubeadm::Env {
        systemctl: node.bin.as_ref().and_then(|_| in_path("systemctl")),
        advertise_address: node.advertise_address,
        wait: kubesim::kubeadm::DEFAULT_WAIT,
        root: node.root,
        cluster: node.cluster_base,
        version: node.version,
        now: kubesim::clock::now_unix(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = kubesim::kubeadm::run(&args, &env, &mut std::io::stdin().lock());
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(u8::try_from(outcome.code).unwrap_or(1))
}
