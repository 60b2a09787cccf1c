//! `kube-controller-manager` stand-in (see `kubesim::controller_manager`). Run by the kubelet
//! stand-in from the static pod manifest; stops on SIGTERM/SIGINT and when the node's root goes
//! away.

use std::process::ExitCode;

fn main() -> ExitCode {
    kubesim::daemon::init_logging();
    let env = match kubesim::env::NodeEnv::from_env() {
        Ok(env) => env,
        Err(err) => {
            eprintln!("kube-controller-manager (kubesim stand-in): {err}");
            return ExitCode::from(1);
        }
    };
    let root = env.root.clone();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("Kubernetes {}", env.version);
        return ExitCode::SUCCESS;
    }
    let config = match kubesim::controller_manager::ControllerManagerConfig::from_args(&args, &env)
    {
        Ok(c) => c,
        Err(err) => {
            eprintln!("Error: {}", kubesim::daemon::error_chain(&err));
            return ExitCode::from(1);
        }
    };
    kubesim::daemon::block_on(kubesim::controller_manager::run(
        config,
        kubesim::daemon::shutdown_signal(root),
    ));
    ExitCode::SUCCESS
}
