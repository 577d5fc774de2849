//! The help texts: `ferry --help` (the overview) and one page per command.
//!
//! Key idea: each page is what a user needs to run that command without the README: its
//! usage, its options with their defaults, one example and its exit codes. The option lists
//! that several commands share are written once (macros, so that `concat!` can join them).

/// `-h`, `-q`, `-v`: taken by every command.
macro_rules! output_options {
    () => {
        "\
OUTPUT OPTIONS:
    -h, --help               show this help
    -q, --quiet              errors only (no progress line, no info or warning lines)
    -v, --verbose            ferry's debug messages; -vv: trace (RUST_LOG, when set, wins;
                             other libraries stay at warn unless RUST_LOG names them)
"
    };
}

/// The options that say where and how to upload: `upload`, `run`, `check-config`.
macro_rules! server_options {
    () => {
        "\
OPTIONS (each overrides the same key of the --config file, shown in brackets):
    --config FILE            TOML config file (see systemd/ferry.toml.example)
    --endpoint URL           tus creation endpoint, or the broker  [server.endpoint]
    --target KIND            tus | cloudflare-stream | url-broker; default tus
                                                                   [server.target]
    --stream-account-id ID   Cloudflare account (cloudflare-stream) [stream.account_id]
    --stream-api-token-file PATH   API token file or credential:NAME [stream.api_token_file]
    --state-dir DIR          where upload state is kept; default $STATE_DIRECTORY, else
                             $XDG_STATE_HOME/ferry, else ~/.local/state/ferry  [state_dir]
    --chunk-size SIZE        bytes per PATCH, at least 64KiB; default: chosen from
                             the link's rate and the server's handling of cuts
                                                                   [upload.chunk_size]
    --rate-limit RATE        bytes/s for all uploads together, e.g. 2MiB/s; default 0 =
                             none                                  [upload.rate_limit]
    --header 'Name: value'   extra request header (repeatable)     [server.headers]
    --header-file Name=PATH  header whose value is read from PATH or credential:NAME
                             (for secrets; repeatable)             [server.header_files]
    --metadata key=value     extra Upload-Metadata (repeatable)    [upload.metadata]
    --no-default-metadata    do not send filename and filetype     [upload.default_metadata]
    --checksum MODE          auto | off | sha1 | sha256; default auto  [upload.checksum]
    --creation-with-upload   send small files with the POST        [upload.creation_with_upload]
    --ca-file PATH           trust this CA (PEM)                   [server.ca_file]
    --client-cert PATH       client certificate (PEM)              [server.client_cert]
    --client-key PATH        client key (PEM)                      [server.client_key]
    --cipher-order ORDER     auto | aes | chacha: TLS suites offered first; default auto
                             (ChaCha20 on a CPU without AES instructions)
                                                                   [server.cipher_order]
    --auth-cross-origin      send credentials to other origins     [server.auth_cross_origin]
    --connect-timeout DUR    default 15s                           [server.connect_timeout]
    --idle-timeout DUR       stalled-link detection; default 30s   [server.idle_timeout]
    --response-timeout DUR   limit for an answer; default 60s      [server.response_timeout]
    --min-send-rate RATE     slowest body send, bytes/s; default 1KiB [server.min_send_rate]
    --max-attempts N         give up after N failed attempts in a row; default 0 = never
                                                                   [retry.max_attempts]
    --give-up-after DUR      give up after DUR without progress; default 0 = never
                                                                   [retry.give_up_after]
SIZE is 262144, 256KiB, 6MiB (binary) or 5MB (decimal); DUR is 500ms, 30s, 2m, 1h or 1d.
"
    };
}

/// The options that find a daemon's state directory: `status`, `pause`, `resume`.
macro_rules! state_options {
    () => {
        "\
OPTIONS:
    --config FILE            the daemon's config file, whose state_dir is used; default
                             /etc/ferry/ferry.toml when it exists
    --state-dir DIR          the daemon's state directory; default as in the config file,
                             else $STATE_DIRECTORY, else $XDG_STATE_HOME/ferry, else
                             ~/.local/state/ferry
"
    };
}

/// `ferry --help`, `ferry help`; also on stderr for `ferry` alone.
pub(crate) const OVERVIEW: &str = concat!(
    "\
ferry: resumable tus uploads that survive cut links, crashes and restarts

USAGE:
    ferry upload [OPTIONS] FILE...     upload files (resumes where the server left off)
    ferry upload --cancel FILE...      terminate the files' uploads and forget them
    ferry run [OPTIONS]                the spool daemon (config: /etc/ferry/ferry.toml)
    ferry status [--json] [OPTIONS]    what the daemon is doing
    ferry pause | resume [OPTIONS]     stop / restart uploading (survives restarts)
    ferry limit [RATE | off] [OPTIONS] set / remove the daemon's rate limit (survives restarts)
    ferry check-config [OPTIONS]       validate the configuration
    ferry broker [OPTIONS]             one-time Cloudflare Stream upload URLs for devices
                                       (not in device builds)
    ferry help | --help | --version

`ferry COMMAND --help` shows a command's options, with their defaults and an example.

",
    output_options!(),
    "
EXAMPLE:
    ferry upload --endpoint https://tus.example.com/files/ a.mp4 b.mp4

EXIT: 0 success, 1 some file failed or a runtime error, 2 usage or configuration error;
`ferry status`: 3 when no daemon is running.
"
);

/// `ferry upload --help`.
pub(crate) const UPLOAD: &str = concat!(
    "\
ferry upload: upload files to a tus server, each to completion

USAGE:
    ferry upload [OPTIONS] FILE...
    ferry upload --cancel [--force] [OPTIONS] FILE...

Running the same command again (after Ctrl-C, kill -9, a cut link or a reboot) resumes each
file at the byte the server holds; the upload URLs are kept in the state directory. A symbolic
link named here is followed to the regular file it points to.

    --cancel                 terminate the files' unfinished uploads on the server and
                             forget them
    --force                  with --cancel: also terminate complete uploads (which deletes
                             the server's copy)
",
    server_options!(),
    output_options!(),
    "
EXAMPLE:
    ferry upload --endpoint https://tus.example.com/files/ --chunk-size 6MiB a.mp4 b.mp4

OUTPUT: one line per finished file on stdout: <path><TAB><upload URL>[<TAB><media id>] (the
third field when the server named the video: Cloudflare Stream's stream-media-id); progress
and messages on stderr.
EXIT: 0 every file complete, 1 some file failed or a runtime error, 2 usage or configuration
error. Ctrl-C stops at the next read, says how to resume and ends by SIGINT, as without ferry's
handler (130 in a shell); a second Ctrl-C ends it at once.
"
);

/// `ferry run --help`.
pub(crate) const RUN: &str = concat!(
    "\
ferry run: the spool daemon: uploads every file that appears in the spool directory

USAGE:
    ferry run [OPTIONS]

Reads /etc/ferry/ferry.toml when no --config is given and that file exists. Symbolic links
and other non-regular files in the spool are never followed or uploaded.

DAEMON OPTIONS:
    --spool DIR              the spool directory (required)        [spool.dir]
    --after-upload ACTION    delete | keep | move:DIR; default delete  [spool.after_upload]
    --failed-dir DIR         where permanently failed files go; default: kept in place
                                                                   [spool.failed_dir]
",
    server_options!(),
    output_options!(),
    "
EXAMPLE:
    ferry run --config /etc/ferry/ferry.toml

EXIT: 0 stopped by SIGTERM or SIGINT, 1 a runtime error (systemd restarts ferry), 2 usage or
configuration error (systemd does not restart ferry for it).
"
);

/// `ferry status --help`.
pub(crate) const STATUS: &str = concat!(
    "\
ferry status: what the daemon on a state directory is doing

USAGE:
    ferry status [--json] [OPTIONS]

    --json                   one JSON object (with \"running\": true or false) instead of text
",
    state_options!(),
    output_options!(),
    "
EXAMPLE:
    ferry status --config /etc/ferry/ferry.toml

EXIT: 0 a daemon is running on the state directory; 3 no daemon is running (what it last
recorded is still printed), as with `systemctl is-active`; 1 the status cannot be read; 2 usage
or configuration error.
"
);

/// `ferry pause --help`.
pub(crate) const PAUSE: &str = concat!(
    "\
ferry pause: stop uploading until `ferry resume`, across restarts

USAGE:
    ferry pause [OPTIONS]

Writes a marker into the state directory: a running daemon stops sending within a second, and
a daemon started later starts paused. Without a running daemon it says so, and writes it.

",
    state_options!(),
    output_options!(),
    "
EXAMPLE:
    ferry pause --config /etc/ferry/ferry.toml

EXIT: 0 paused, 1 the marker cannot be written, 2 usage or configuration error.
"
);

/// `ferry resume --help`.
pub(crate) const RESUME: &str = concat!(
    "\
ferry resume: start uploading again after `ferry pause`

USAGE:
    ferry resume [OPTIONS]

Removes the pause marker from the state directory: a running daemon resumes within a second.
Without a running daemon it says so, and removes it.

",
    state_options!(),
    output_options!(),
    "
EXAMPLE:
    ferry resume --config /etc/ferry/ferry.toml

EXIT: 0 resumed, 1 the marker cannot be removed, 2 usage or configuration error.
"
);

/// `ferry limit --help`.
pub(crate) const LIMIT: &str = concat!(
    "\
ferry limit: set, remove or show the daemon's upload rate limit, across restarts

USAGE:
    ferry limit RATE [OPTIONS]     all uploads together send at most RATE, e.g. 512KiB/s;
                                   0 = no limit at all
    ferry limit off [OPTIONS]      back to the configured rates (upload.rate_limit, windows')
    ferry limit [OPTIONS]          show the override, if any

The rate is written into the state directory: a running daemon applies it within a second,
and a daemon started later starts with it. It overrides every configured rate until
`ferry limit off`. Without a running daemon it says so, and writes it.

",
    state_options!(),
    output_options!(),
    "
EXAMPLE:
    ferry limit 512KiB/s --config /etc/ferry/ferry.toml

EXIT: 0 done, 1 the file cannot be written or read, 2 usage or configuration error.
"
);

/// `ferry check-config --help`.
pub(crate) const CHECK_CONFIG: &str = concat!(
    "\
ferry check-config: validate the configuration; with --probe, ask the endpoint too

USAGE:
    ferry check-config [OPTIONS]

Reads /etc/ferry/ferry.toml when no --config is given and that file exists, checks every key
and reads the secret files, then prints the endpoint, state and spool directories.

    --probe      also ask the endpoint, with the configured credentials and TLS settings:
                 reachable (host:port), TLS, tus version, extensions, max size, and whether
                 these credentials may create uploads. Leaves nothing on the server: a 1-byte
                 test upload is created only where the server supports termination, and
                 deleted at once; Cloudflare Stream gets OPTIONS only; a URL broker is asked
                 its /healthz (a creation would spend a one-time URL)

DAEMON OPTIONS: --spool DIR, --after-upload ACTION, --failed-dir DIR (see `ferry run --help`)
",
    server_options!(),
    output_options!(),
    "
EXAMPLE:
    ferry check-config --config /etc/ferry/ferry.toml --probe

EXIT: 0 the configuration is valid (and the probe passed), 1 a runtime error, 2 usage or
configuration error, 4 the configuration is valid but the endpoint failed the probe.
"
);
