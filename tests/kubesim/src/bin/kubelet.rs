//! `kubelet` stand-in (see `kubesim::kubelet`). Started by the systemctl stand-in from the
//! kubelet unit; never daemonizes.

use std::process::ExitCode;

fn main() -> ExitCode {
    kubesim::daemon::init_logging();
    let env = match kubesim::env::NodeEnv::from_env() {
        Ok(env) => env,
        Err(err) => {
            eprintln!("kubelet (kubesim stand-in): {err}");
            return ExitCode::from(1);
        }
    };
    let root = env.root.clone();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match kubesim::kubelet::KubeletConfig::from_args(&args, &env) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("Kubernetes {}", env.version);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("Error: {err}");
            return ExitCode::from(1);
        }
    };
    kubesim::daemon::block_on(
        kubesim::kubelet::Kubelet::new(config).run(kubesim::daemon::shutdown_signal(root)),
    );
    ExitCode::SUCCESS
}
