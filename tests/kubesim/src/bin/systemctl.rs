//! `systemctl` stand-in (see `kubesim::systemd`). Needs `KUBESIM_ROOT` and `KUBESIM_CLUSTER`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let env = match kubesim::env::NodeEnv::from_env() {
        Ok(env) => env,
        Err(err) => {
            eprintln!("systemctl (kubesim stand-in): {err}");
            return ExitCode::from(1);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inherited = std::env::vars_os()
        .filter(|(name, _)| kubesim::systemd::inherited_by_services(name))
        .collect();
    let systemctl = kubesim::systemd::Systemctl::new(env, inherited);
    let outcome = systemctl.run(&args);
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(u8::try_from(outcome.code).unwrap_or(1))
}
