//! Compares `tally::envfile::parse` with the real `docker run --env-file`.
//! Each case file goes to a container that prints its environment, and the
//! variables must match, or both must reject the file at the same line.
//!
//! Needs a running docker engine. When `docker info` fails the tests pass
//! with a note on stderr, unless TALLY_REQUIRE_DOCKER=1 makes that a
//! failure. A missing image `tally-test-printenv:local` is built with
//! `docker import` from the host's `/usr/bin/env` and the libraries `ldd`
//! lists, and kept for later runs.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tally::envfile;

const IMAGE: &str = "tally-test-printenv:local";

/// Variables the engine and runc add to every container.
const DOCKER_DEFAULTS: [&str; 3] = ["PATH", "HOSTNAME", "HOME"];

/// Host variables for bare `NAME` lines. The docker CLI gets them in its
/// environment, and `parse` gets them from `lookup_host`.
const HOST_VARS: [(&str, &str); 3] = [
    ("TALLY_ENVFILE_HOST", "host value"),
    ("TALLY_ENVFILE_EMPTY", ""),
    ("TALLY_ENVFILE_QUOTED", "\"q\""),
];
const MISSING_VAR: &str = "TALLY_ENVFILE_MISSING";

/// Maximum line length docker reads, in bytes, counting a trailing `\r`.
const MAX_LINE_BYTES: usize = 65535;

struct Rejection {
    line: usize,
    /// Part of docker's error message.
    docker_error: &'static str,
}

fn long_line(length: usize) -> String {
    format!("LONG={}", "x".repeat(length - "LONG=".len()))
}

fn accepted_cases() -> Vec<(&'static str, Vec<u8>)> {
    let cases: Vec<(&str, &[u8])> = vec![
        ("empty file", b""),
        ("plain", b"A=1\nB=2\n"),
        ("no final newline", b"A=1\nB=2"),
        ("leading blanks", b"  A=1\n\tB=2\n\x0bC=3\n\x0cD=4\n"),
        (
            "unicode blanks",
            "\u{a0}A=1\n\u{85}B=2\n\u{3000}C=3\n".as_bytes(),
        ),
        ("zero width space", "\u{200b}A=1\n".as_bytes()),
        ("trailing blanks", b"A=1 \t\nB= \n"),
        ("blank lines", b"\n   \n\t\nA=1\n\n\n"),
        ("comments", b"# x=1\n   # y=2\n\t#\nA=1\n#B=2"),
        ("hash in value", b"A=1 # note\nB=#2\n"),
        ("hash in name", b"A#=1\n"),
        ("quotes", b"A=\"q\"\nB='s'\nC=\"x'\nD=\"\n"),
        ("dollar", b"A=$HOME\nB=${PATH}\n"),
        ("equals in value", b"A=b=c=\nB==\n"),
        ("empty value", b"A=\n"),
        ("crlf", b"A=1\r\nB=2\r\n"),
        ("crlf last line", b"A=1\r\nB=2\r"),
        ("two cr", b"A=1\r\r\n"),
        ("inner cr", b"A=x\ry\nB\rC=2\n"),
        ("bom", b"\xef\xbb\xbfA=1\n"),
        ("bom and blanks", b"\xef\xbb\xbf  A=1\n"),
        ("blank before bom", b" \xef\xbb\xbfA=1\n"),
        ("two boms", b"\xef\xbb\xbf\xef\xbb\xbfA=1\n"),
        ("bom on line 2", b"A=1\n\xef\xbb\xbfB=2\n"),
        (
            "odd names",
            "1A=1\nA-B=2\nA.B=3\n\u{c4}=4\nA\x0b=5\nA\u{a0}=6\n".as_bytes(),
        ),
        (
            "bare names",
            b"TALLY_ENVFILE_HOST\nTALLY_ENVFILE_EMPTY\nTALLY_ENVFILE_QUOTED\n",
        ),
        ("bare missing", b"A=1\nTALLY_ENVFILE_MISSING\n"),
        (
            "bare after value",
            b"TALLY_ENVFILE_HOST=1\nTALLY_ENVFILE_HOST\n",
        ),
        ("bare with nul", b"TALLY_ENVFILE_HOST\0\nA=1\n"),
        ("nul in comment", b"#\0\nA=1\n"),
        ("repeated names", b"A=1\nB=2\nA=3\nC=4\nB=5\n"),
    ];
    let mut cases: Vec<(&str, Vec<u8>)> = cases
        .into_iter()
        .map(|(name, text)| (name, text.to_vec()))
        .collect();

    let longest = long_line(MAX_LINE_BYTES);
    let longest_crlf = long_line(MAX_LINE_BYTES - 1);
    cases.push(("longest line", format!("A=1\n{longest}\nB=2\n").into()));
    cases.push(("longest last line", longest.into()));
    cases.push(("longest crlf line", format!("{longest_crlf}\r\n").into()));
    cases
}

fn rejected_cases() -> Vec<(&'static str, Vec<u8>, Rejection)> {
    const SPACE: &str = "contains whitespaces";
    const NO_NAME: &str = "no variable name";
    const TOO_LONG: &str = "token too long";
    // runc 1.1 writes `null(\x00)` and runc 1.2 `nul byte (\x00)`.
    const NUL: &str = "\\x00";
    let cases: Vec<(&str, &[u8], usize, &str)> = vec![
        ("space in name", b"A=1\nA B=1\n", 2, SPACE),
        ("tab in name", b"A\tB=1\n", 1, SPACE),
        ("space before equals", b"A =1\n", 1, SPACE),
        ("export keyword", b"export A=1\n", 1, SPACE),
        ("bare with space", b"TALLY_ENVFILE_HOST \n", 1, SPACE),
        ("bare line of words", b"first line\n", 1, SPACE),
        ("empty name", b"=value\n", 1, NO_NAME),
        ("blanks then empty name", b"A=1\n  =value\n", 2, NO_NAME),
        (
            "invalid utf-8",
            b"A=1\nB=\xff\n",
            2,
            "invalid utf8 bytes at line 2",
        ),
        (
            "invalid utf-8 comment",
            b"#\xfe\n",
            1,
            "invalid utf8 bytes at line 1",
        ),
        (
            "encoded surrogate",
            b"A=\xed\xa0\x80\n",
            1,
            "invalid utf8 bytes at line 1",
        ),
        ("nul in value", b"A=1\nB=x\0\n", 2, NUL),
        ("nul in name", b"A\0=1\n", 1, NUL),
        ("nul then bad name", b"A=\0\nB C=1\n", 2, SPACE),
    ];
    let mut cases: Vec<(&str, Vec<u8>, Rejection)> = cases
        .into_iter()
        .map(|(name, text, line, docker_error)| {
            (name, text.to_vec(), Rejection { line, docker_error })
        })
        .collect();

    let too_long = long_line(MAX_LINE_BYTES + 1);
    let too_long_crlf = long_line(MAX_LINE_BYTES);
    let rejection = |line| Rejection {
        line,
        docker_error: TOO_LONG,
    };
    cases.push((
        "line too long",
        format!("A=1\nB=2\n{too_long}\n").into(),
        rejection(3),
    ));
    cases.push(("last line too long", too_long.into(), rejection(1)));
    cases.push((
        "crlf line too long",
        format!("{too_long_crlf}\r\n").into(),
        rejection(1),
    ));
    cases
}

#[test]
fn envfile_matches_docker_on_accepted_files() {
    if !is_docker_ready() {
        return;
    }
    let dir = scratch_dir("accepted");
    let mut failures = Vec::new();
    for (index, (name, text)) in accepted_cases().into_iter().enumerate() {
        let path = dir.join(format!("{index}.env"));
        fs::write(&path, &text).unwrap();
        let output = run_docker(&path);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            failures.push(format!("{name}: docker failed: {}", stderr.trim()));
            continue;
        }

        let from_docker = container_vars(&output.stdout);
        let from_parse = envfile::parse(&text, lookup_host).map(without_defaults);
        if from_parse.as_ref() != Ok(&from_docker) {
            failures.push(format!(
                "{name}: docker {from_docker:?}, parse {from_parse:?}"
            ));
        }
    }
    fs::remove_dir_all(&dir).unwrap();
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn envfile_matches_docker_on_rejected_files() {
    if !is_docker_ready() {
        return;
    }
    let dir = scratch_dir("rejected");
    let mut failures = Vec::new();
    for (index, (name, text, rejection)) in rejected_cases().into_iter().enumerate() {
        let path = dir.join(format!("{index}.env"));
        fs::write(&path, &text).unwrap();
        let output = run_docker(&path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            failures.push(format!("{name}: docker accepted the file"));
        } else if !stderr.contains(rejection.docker_error) {
            failures.push(format!(
                "{name}: docker error without '{}': {}",
                rejection.docker_error,
                stderr.trim()
            ));
        }

        match envfile::parse(&text, lookup_host) {
            Err(error) if error.line == rejection.line => {}
            Err(error) => failures.push(format!(
                "{name}: parse rejected line {}, expected line {}: {error}",
                error.line, rejection.line
            )),
            Ok(vars) => failures.push(format!("{name}: parse accepted {vars:?}")),
        }
    }
    fs::remove_dir_all(&dir).unwrap();
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

fn lookup_host(name: &str) -> Option<String> {
    HOST_VARS
        .iter()
        .find(|(host_name, _)| *host_name == name)
        .map(|(_, value)| value.to_string())
}

/// Sorts by name, because the position of a repeated name depends on the
/// runc version. runc 1.1 keeps the first position, 1.2 and later the last.
fn without_defaults(vars: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| !DOCKER_DEFAULTS.contains(&name.as_str()))
        .collect();
    vars.sort();
    vars
}

/// Splits the output of `env -0` into name and value pairs.
fn container_vars(stdout: &[u8]) -> Vec<(String, String)> {
    let vars = stdout
        .split(|&byte| byte == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let entry = String::from_utf8(entry.to_vec()).unwrap();
            let (name, value) = entry.split_once('=').unwrap();
            (name.to_string(), value.to_string())
        })
        .collect();
    without_defaults(vars)
}

fn run_docker(env_file: &Path) -> Output {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let container = format!("tally-envfile-test-{}-{run}", process::id());

    let mut command = Command::new("docker");
    command
        .args(["run", "--rm", "--name", &container, "--env-file"])
        .arg(env_file)
        .args([IMAGE, "/usr/bin/env", "-0"])
        .env_remove(MISSING_VAR);
    for (name, value) in HOST_VARS {
        command.env(name, value);
    }
    command.output().expect("failed to run docker")
}

/// Returns whether the comparison can run. Checks once that `docker info`
/// succeeds and builds the image if it is missing. Panics when docker is
/// unavailable and TALLY_REQUIRE_DOCKER=1.
fn is_docker_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        if !succeeds(Command::new("docker").arg("info")) {
            let required = env::var("TALLY_REQUIRE_DOCKER").as_deref() == Ok("1");
            assert!(!required, "`docker info` failed and TALLY_REQUIRE_DOCKER=1");
            eprintln!("note: docker is not available, skipping the --env-file comparison");
            return false;
        }
        if !succeeds(Command::new("docker").args(["image", "inspect", IMAGE])) {
            build_image();
        }
        true
    })
}

/// Imports a root file system that contains only `/usr/bin/env` and the shared
/// libraries it loads, because no registry is reachable.
fn build_image() {
    let root = scratch_dir("rootfs");
    let binary = PathBuf::from("/usr/bin/env");
    let mut files = linked_libraries(&binary);
    files.push(binary);
    for file in &files {
        let target = root.join(file.strip_prefix("/").unwrap());
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(file, &target)
            .unwrap_or_else(|e| panic!("failed to copy {} into the image: {e}", file.display()));
    }

    let tarball = root.with_extension("tar");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".");
    assert!(succeeds(&mut tar), "tar of {} failed", root.display());
    let mut import = Command::new("docker");
    import.arg("import").arg(&tarball).arg(IMAGE);
    assert!(succeeds(&mut import), "docker import of {IMAGE} failed");

    fs::remove_dir_all(&root).unwrap();
    fs::remove_file(&tarball).unwrap();
}

/// Lists the absolute paths in `ldd` output, which include the dynamic
/// loader, and skips the vDSO, which has none.
fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("failed to run ldd, which Debian ships in libc-bin");
    assert!(output.status.success(), "ldd {} failed", binary.display());
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn scratch_dir(label: &str) -> PathBuf {
    let dir = env::temp_dir().join(format!("tally-envfile-{label}-{}", process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}
