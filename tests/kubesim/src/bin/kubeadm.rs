//! `kubeadm` stand-in (see the `kubesim` crate documentation). Needs `KUBESIM_ROOT` and
//! `KUBESIM_CLUSTER`; `KUBESIM_VERSION` defaults to `v1.33.1`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let (Some(root), Some(cluster)) = (
        std::env::var_os("KUBESIM_ROOT"),
        std::env::var_os("KUBESIM_CLUSTER"),
    ) else {
        eprintln!("kubeadm (kubesim stand-in): KUBESIM_ROOT and KUBESIM_CLUSTER must be set");
        return ExitCode::from(1);
    };
    let env = kubesim::kubeadm::Env {
        root: root.into(),
        cluster: cluster.into(),
        version: std::env::var("KUBESIM_VERSION").unwrap_or_else(|_| "v1.33.1".into()),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = kubesim::kubeadm::run(&args, &env, &mut std::io::stdin().lock());
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(u8::try_from(outcome.code).unwrap_or(1))
}
