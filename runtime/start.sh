#!/usr/bin/env bash
# aiclipse runtime: PID 1's child under tini (`tini -g -- start.sh`). Checks every variable,
# prepares the volume, starts the side services with authentication (ComfyUI behind an
# authenticating proxy), downloads the models, then execs ComfyUI as the runtime user so
# signals reach it. Safe to run again on the same volume: every step checks before it writes.
# One log line per step; no secret is ever printed (the only value printed is a token or
# password generated here, once, when it is generated).
# Secrets: the first thing start.sh does is re-exec itself with an environment without them
# (they travel on a pipe); each step then gets only the secrets it needs, long-running
# services none. Environment variables: docs/runtime.md.
set -euo pipefail

# ---- configuration -------------------------------------------------------------------------
ROOT="${AICLIPSE_ROOT:-/workspace/aiclipse}"
# The state (host keys, the proxy's, Jupyter's and FileBrowser's credentials) lives beside the
# data folder, never in it: FileBrowser serves the data folder. Older images kept it in
# $ROOT/.aiclipse (moved out at the first start of this one).
ROOT_PARENT="$(dirname "$ROOT")"
STATE="${AICLIPSE_STATE:-${ROOT_PARENT%/}/.aiclipse}"
OLD_STATE="$ROOT/.aiclipse"
SELF="$(readlink -f "${BASH_SOURCE[0]}")"
RUNTIME_DIR="${AICLIPSE_RUNTIME_DIR:-$(dirname "$SELF")}"
RUNTIME_USER="${RUNTIME_USER:-comfy}"
COMFY_DIR="${COMFY_DIR:-/opt/ComfyUI}"
PYTHON="${AICLIPSE_PYTHON:-/opt/venv/bin/python}"
WORKFLOWS_TEMPLATE_DIR="${WORKFLOWS_TEMPLATE_DIR:-/opt/workflows}"
MANAGER_CONFIG="${AICLIPSE_MANAGER_CONFIG:-/opt/aiclipse/manager-config.ini}"
MANAGER_MODE="${AICLIPSE_MANAGER_MODE:-git}" # package: ComfyUI starts it (--enable-manager)
MODELS_MANIFEST="${MODELS_MANIFEST:-/manifests/models_manifest.txt}"
NODES_MANIFEST="${NODES_MANIFEST:-$ROOT/nodes_manifest.txt}"
FILEBROWSER_BIN="${FILEBROWSER_BIN:-/usr/local/bin/filebrowser}"
CADDY_BIN="${CADDY_BIN:-/usr/bin/caddy}"
PROXY_USER="${AICLIPSE_PROXY_USER:-caddy}" # the proxy's own user: ComfyUI cannot read its config
PROXY_HOME=/var/lib/aiclipse-proxy # caddy's HOME and XDG dirs: its own, 0700 (not /tmp)
# The downloader's own user (it holds HF_TOKEN/CIVITAI_TOKEN): another uid than ComfyUI's, so
# no custom node, Jupyter kernel or FileBrowser can read its /proc/<pid>/environ or memory.
MODELS_USER="${AICLIPSE_MODELS_USER:-aiclipse-models}"
LISTEN="${AICLIPSE_LISTEN:-0.0.0.0}" # the address every service listens on
COMFY_PORT="${COMFY_PORT:-8188}"
COMFY_INTERNAL_PORT="${COMFY_INTERNAL_PORT:-18188}" # ComfyUI itself, on 127.0.0.1, behind the proxy
DATA_DIRS=(models output input user custom_nodes workflows)
# What start.sh takes out of the environment before anything runs: the secrets it knows and
# anything named like one. AICLIPSE_PASS_ENV names those ComfyUI gets (API nodes' keys).
SECRET_VARS=(HF_TOKEN CIVITAI_TOKEN COMFY_TOKEN JUPYTER_TOKEN JUPYTER_PASSWORD FILEBROWSER_PASSWORD)
SECRET_PATTERN='(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|APIKEY|PRIVATE_KEY|CREDENTIAL)'
NOT_SECRET=(AICLIPSE_TOKEN_HOSTS) # named like one, but configuration (which host gets which)
declare -A SECRETS=()

log() { printf '[aiclipse] %s\n' "$*"; }
die() {
  log "ERROR: $*" >&2
  exit 1
}
is_on() { [[ "${1:-}" =~ ^(1|true|yes|on)$ ]]; }

is_secret() {
  local name="$1" known
  for known in "${NOT_SECRET[@]}"; do
    [[ "$name" == "$known" ]] && return 1
  done
  for known in "${SECRET_VARS[@]}"; do
    [[ "$name" == "$known" ]] && return 0
  done
  [[ "$name" =~ $SECRET_PATTERN ]]
}

# Re-exec without the secrets in the environment: /proc/<pid>/environ of this shell and of
# everything it starts then holds none. They come back on fd 3 (a pipe) as shell variables
# (SECRETS[name]), never exported; with_secrets hands a step the ones it needs.
scrub_environment() {
  local entry name blob="" keep=()
  if [[ "${AICLIPSE_SCRUBBED:-}" == 1 ]]; then
    unset AICLIPSE_SCRUBBED
    if [[ -e /dev/fd/3 ]]; then
      # shellcheck disable=SC1091 # our own printf %q lines, from the run before the re-exec
      source /dev/fd/3
      exec 3<&-
    fi
    while IFS= read -r -d '' entry; do
      if is_secret "${entry%%=*}"; then
        die "environment: ${entry%%=*} survived the scrub (AICLIPSE_SCRUBBED is start.sh's own)"
      fi
    done < <(env -0)
    return
  fi
  while IFS= read -r -d '' entry; do
    name="${entry%%=*}"
    if is_secret "$name"; then
      blob+="$(printf 'SECRETS[%q]=%q' "$name" "${entry#*=}")"$'\n'
    else
      keep+=("$entry")
    fi
  done < <(env -0)
  exec env -i "${keep[@]}" AICLIPSE_SCRUBBED=1 "$BASH" "$SELF" "$@" 3<<<"$blob"
}

# Run a command with the named secrets exported to it alone (a subshell: the exports end
# with it; values through the environment, never argv).
with_secrets() {
  local names=()
  while [[ $# -gt 0 && "$1" != -- ]]; do names+=("$1"); shift; done
  shift
  (
    for name in "${names[@]}"; do
      if [[ -v "SECRETS[$name]" ]]; then export "$name=${SECRETS[$name]}"; fi
    done
    "$@"
  )
}

# Run a command as the runtime user (or as we are, when the container was started non-root).
as_user() {
  if [[ $EUID -eq 0 ]]; then
    HOME="$RUNTIME_HOME" USER="$RUNTIME_USER" LOGNAME="$RUNTIME_USER" \
      setpriv --reuid="$RUNTIME_UID" --regid="$RUNTIME_GID" --init-groups -- "$@"
  else
    "$@"
  fi
}

# The same, replacing this shell (no root bash is left behind as the service's parent).
exec_as_user() {
  if [[ $EUID -eq 0 ]]; then
    exec env HOME="$RUNTIME_HOME" USER="$RUNTIME_USER" LOGNAME="$RUNTIME_USER" \
      setpriv --reuid="$RUNTIME_UID" --regid="$RUNTIME_GID" --init-groups -- "$@"
  fi
  exec "$@"
}

# Run the downloader as its own user (MODELS_USER, group: the runtime user's, no other
# groups), with a HOME that does not exist: nothing of the runtime user's (its home, user
# site, PYTHON* variables) reaches a process that holds the tokens.
as_models() {
  if [[ $EUID -eq 0 ]]; then
    HOME=/nonexistent USER="$MODELS_USER" LOGNAME="$MODELS_USER" \
      setpriv --reuid="$MODELS_UID" --regid="$RUNTIME_GID" --clear-groups -- "$@"
  else
    "$@"
  fi
}

# Python as root: no PYTHON* variables, no user site.
root_python() { "$PYTHON" -E -s "$@"; }

# A private folder of the runtime user's (under the root-owned state folder, when root).
user_dir() {
  if [[ $EUID -eq 0 ]]; then
    install -d -m 0700 -o "$RUNTIME_UID" -g "$RUNTIME_GID" "$1"
  else
    install -d -m 0700 "$1"
  fi
}

# Start a long-running service (as the runtime user) detached from this shell: it is
# re-parented to tini, which reaps it, and stays in tini's process group, so `docker stop`
# (tini -g) reaches it too. The forked shell execs it: no root bash stays behind.
detach() { (exec_as_user "$@" &) ; }

# ---- steps ---------------------------------------------------------------------------------
# Every variable against its rule (aiclipse_config.py validate), before anything uses one: a
# bad value stops the start, naming the variable and the rule.
validate_environment() {
  local line
  line="$(with_secrets "${!SECRETS[@]}" -- root_python "$RUNTIME_DIR/aiclipse_config.py" validate)" ||
    die "environment: fix the variable(s) named above"
  log "$line"
}

resolve_user() {
  if [[ $EUID -ne 0 ]]; then
    RUNTIME_USER="$(id -un)"
  fi
  RUNTIME_UID="$(id -u "$RUNTIME_USER")" || die "runtime user '$RUNTIME_USER' does not exist"
  RUNTIME_GID="$(id -g "$RUNTIME_USER")"
  RUNTIME_HOME="$(getent passwd "$RUNTIME_USER" | cut -d: -f6)"
  if [[ $EUID -eq 0 ]]; then
    MODELS_UID="$(id -u "$MODELS_USER")" ||
      die "models: the downloader's user '$MODELS_USER' does not exist (the image makes it)"
    if [[ "$MODELS_UID" == 0 || "$MODELS_UID" == "$RUNTIME_UID" ]]; then
      die "models: AICLIPSE_MODELS_USER=$MODELS_USER must be a user of its own (not root, not $RUNTIME_USER): it holds the tokens"
    fi
  else
    MODELS_USER="$(id -un)"
    MODELS_UID="$EUID"
  fi
  log "user: $RUNTIME_USER ($RUNTIME_UID:$RUNTIME_GID), downloader $MODELS_USER ($MODELS_UID), volume $ROOT, state $STATE, ComfyUI $COMFY_DIR"
}

# A real folder of root's (not a symlink, not the runtime user's).
roots_folder() { [[ ! -L "$1" && -d "$1" && "$(stat -c %u "$1")" == 0 ]]; }

prepare_volume() {
  local dir fixed=0
  mkdir -p "$ROOT"
  if [[ $EUID -eq 0 ]]; then
    # The state's parent may be the runtime user's (the volume's root is on some clouds;
    # $ROOT is), so they can rename root's state folder and put one of their own there
    # (symlinks inside, for root to follow): only a real, root-owned folder is state;
    # anything else is moved aside and the state made anew (host keys included).
    if [[ -e "$STATE" || -L "$STATE" ]] && [[ -L "$STATE" || ! -d "$STATE" || "$(stat -c %u "$STATE")" != 0 ]]; then
      local aside
      aside="$STATE.untrusted.$(date +%s)"
      mv -T -- "$STATE" "$aside"
      log "WARNING: $STATE was not a folder of root's; moved aside to $aside, state made anew"
    fi
    # An older image's state in $ROOT/.aiclipse (inside FileBrowser's root) moves out, once;
    # only a real folder of root's (the runtime user can plant anything in $ROOT).
    if [[ ! -e "$STATE" && ! -L "$STATE" ]] && roots_folder "$OLD_STATE"; then
      mv -T -- "$OLD_STATE" "$STATE"
      log "state: moved $OLD_STATE (an older image's) to $STATE, outside FileBrowser's root"
    elif roots_folder "$OLD_STATE" && [[ "$(stat -c %a "$OLD_STATE")" != 700 ]]; then
      chmod 0700 "$OLD_STATE"
      log "WARNING: $OLD_STATE (an older image's state) is left beside $STATE: made root-only; remove it"
    fi
  fi
  mkdir -p "$STATE"
  for dir in "${DATA_DIRS[@]}"; do
    mkdir -p "$ROOT/$dir"
  done
  if [[ $EUID -eq 0 ]]; then
    chown "$RUNTIME_UID:$RUNTIME_GID" "$ROOT"
    chmod 0755 "$STATE"
    # Only what is not already ours: a warm volume is walked (metadata only), not rewritten.
    # models/ is the downloader's (own_models).
    fixed="$(find "${DATA_DIRS[@]/#/$ROOT/}" -path "$ROOT/models" -prune -o \
      \( ! -uid "$RUNTIME_UID" -o ! -gid "$RUNTIME_GID" \) \
      -print -exec chown -h "$RUNTIME_UID:$RUNTIME_GID" {} + | wc -l)"
  fi
  log "volume: ${DATA_DIRS[*]} ready under $ROOT ($fixed ownerships fixed)"
}

# models/ belongs to the downloader's user, group the runtime user's, folders 2775: ComfyUI
# reads every model, and the runtime user (Manager, FileBrowser, Jupyter) can still add and
# remove models, but the files the downloader writes (.part, .lock, sidecars) are its own.
# Only what differs is changed.
own_models() {
  [[ $EUID -eq 0 ]] || return 0
  local fixed
  fixed="$(find "$ROOT/models" \( ! -uid "$MODELS_UID" -o ! -gid "$RUNTIME_GID" \) \
    -print -exec chown -h "$MODELS_UID:$RUNTIME_GID" {} + | wc -l)"
  find "$ROOT/models" -type d ! -perm -2775 -exec chmod 2775 {} +
  if [[ "$fixed" != 0 ]]; then
    log "models: $fixed ownerships given to the downloader's user $MODELS_USER"
  fi
}

write_model_paths() {
  local line
  MODEL_PATHS_CONFIG="$STATE/extra_model_paths.yaml"
  line="$(root_python "$RUNTIME_DIR/aiclipse_config.py" model-paths \
    --root "$ROOT" --config "$MODEL_PATHS_CONFIG")" ||
    die "model paths: cannot write $MODEL_PATHS_CONFIG (see above)"
  log "model paths: $line"
  own_models
}

copy_workflows() {
  local copied=0 kept=0 rel link="$ROOT/user/default/workflows"
  if [[ -d "$WORKFLOWS_TEMPLATE_DIR" ]]; then
    while IFS= read -r -d '' rel; do
      if [[ -e "$ROOT/workflows/$rel" ]]; then
        kept=$((kept + 1))
      else
        as_user mkdir -p "$(dirname "$ROOT/workflows/$rel")"
        as_user cp "$WORKFLOWS_TEMPLATE_DIR/$rel" "$ROOT/workflows/$rel"
        copied=$((copied + 1))
      fi
    done < <(cd "$WORKFLOWS_TEMPLATE_DIR" && find . -type f -printf '%P\0')
  fi
  # ComfyUI keeps the user's workflows in <user dir>/default/workflows: point it at ours.
  as_user mkdir -p "$ROOT/user/default"
  if [[ ! -e "$link" && ! -L "$link" ]]; then
    as_user ln -s ../../workflows "$link"
  fi
  log "workflows: $copied copied from $WORKFLOWS_TEMPLATE_DIR, $kept already there (kept)"
}

# ComfyUI-Manager reads its config under ComfyUI's user directory (on the volume): give it
# the image's security level there, and never let an older config weaken it (read the way
# Manager reads it). The package (AICLIPSE_MANAGER_MODE=package) reads user/__manager only; a
# clone that path or the old one. A failure stops the start.
setup_manager() {
  [[ -f "$MANAGER_CONFIG" ]] || { log "manager: no $MANAGER_CONFIG in the image, skipped"; return; }
  local line
  line="$(as_user "$PYTHON" "$RUNTIME_DIR/aiclipse_config.py" manager-config \
    --source "$MANAGER_CONFIG" --user-dir "$ROOT/user" --mode "$MANAGER_MODE")" ||
    die "manager: cannot enforce the image's security level under $ROOT/user (see above)"
  log "$line"
}

# The origins a browser may reach the service on port $1 from (validated already): the pod's
# RunPod proxy origin and AICLIPSE_ALLOWED_ORIGINS, as --origin arguments in ORIGIN_ARGS.
origin_args() {
  local origin list="${AICLIPSE_ALLOWED_ORIGINS:-}"
  ORIGIN_ARGS=()
  if [[ -n "${RUNPOD_POD_ID:-}" ]]; then
    ORIGIN_ARGS+=(--origin "https://$RUNPOD_POD_ID-$1.proxy.runpod.net")
  fi
  for origin in ${list//,/ }; do
    ORIGIN_ARGS+=(--origin "$origin")
  done
}

setup_ssh() {
  local keys port="${SSH_PORT:-22}" conf=/etc/ssh/aiclipse_sshd_config hostkeys="$STATE/ssh"
  local line
  keys=""
  # Each line was checked by validate (plain '<type> <key> [comment]'); ssh-keygen reads it too.
  while IFS= read -r line; do
    line="${line%$'\r'}"
    [[ -z "${line//[[:space:]]/}" || "$line" == '#'* ]] && continue
    ssh-keygen -l -f /dev/stdin <<<"$line" >/dev/null 2>&1 ||
      die "PUBLIC_KEY/SSH_PUBLIC_KEY: a line ssh-keygen does not read as a public key"
    [[ $'\n'"$keys" == *$'\n'"$line"$'\n'* ]] || keys+="$line"$'\n'
  done < <(printf '%s\n%s\n' "${PUBLIC_KEY:-}" "${SSH_PUBLIC_KEY:-}")
  if [[ -z "$keys" ]]; then
    log "ssh: off (set PUBLIC_KEY or SSH_PUBLIC_KEY to enable key-only login)"
    return
  fi
  if [[ $EUID -ne 0 ]]; then
    log "ssh: off (the container runs as $(id -un), sshd needs root)"
    return
  fi
  mkdir -p "$hostkeys" /run/sshd
  chmod 0700 "$hostkeys"
  [[ -f "$hostkeys/ssh_host_ed25519_key" ]] ||
    ssh-keygen -q -t ed25519 -N '' -C '' -f "$hostkeys/ssh_host_ed25519_key"
  [[ -f "$hostkeys/ssh_host_rsa_key" ]] ||
    ssh-keygen -q -t rsa -b 3072 -N '' -C '' -f "$hostkeys/ssh_host_rsa_key"
  # Written AS the runtime user: the home is theirs, and a symlink planted in it (~/.ssh ->
  # /etc, authorized_keys.new -> /root/...) must never be followed with root's rights.
  # shellcheck disable=SC2016 # $1 is the inner shell's
  printf '%s' "$keys" | as_user sh -c 'umask 077 && mkdir -p "$1" && chmod 0700 "$1" &&
    cat >"$1/authorized_keys.new" && mv -f "$1/authorized_keys.new" "$1/authorized_keys"' \
    sh "$RUNTIME_HOME/.ssh" || die "ssh: cannot write $RUNTIME_HOME/.ssh/authorized_keys"
  # sshd without PAM refuses a locked account ('!'): no password at all ('*') is what we want.
  if [[ "$(getent shadow "$RUNTIME_USER" | cut -d: -f2)" == '!'* ]]; then
    usermod -p '*' "$RUNTIME_USER"
  fi
  # Port, address and user were validated (a number, an IP address, a user name): no newline
  # reaches this file.
  cat >"$conf" <<EOF
# Written by start.sh at every start. Key-only login for $RUNTIME_USER.
Port $port
ListenAddress $LISTEN
HostKey $hostkeys/ssh_host_ed25519_key
HostKey $hostkeys/ssh_host_rsa_key
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
AuthenticationMethods publickey
PermitRootLogin no
AllowUsers $RUNTIME_USER
UsePAM no
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
EOF
  /usr/sbin/sshd -t -f "$conf" || die "ssh: sshd rejects $conf"
  /usr/sbin/sshd -f "$conf" -E /var/log/sshd.log
  log "ssh: key-only for $RUNTIME_USER on port $port ($(grep -c . <<<"$keys") key(s); host keys in $hostkeys)"
}

start_jupyter() {
  local dir="$STATE/jupyter" port="${JUPYTER_PORT:-8888}" line lab
  lab="$(dirname "$PYTHON")/jupyter-lab"
  if ! is_on "${JUPYTER_ENABLE:-1}"; then
    log "jupyter: off (JUPYTER_ENABLE=${JUPYTER_ENABLE:-})"
    return
  fi
  # A file test, not an import: importing jupyterlab takes seconds we do not make ComfyUI wait.
  if [[ ! -x "$lab" ]]; then
    log "jupyter: off (no $lab: JupyterLab is not installed beside $PYTHON)"
    return
  fi
  user_dir "$dir"
  origin_args "$port"
  line="$(with_secrets JUPYTER_TOKEN JUPYTER_PASSWORD -- as_user "$PYTHON" \
    "$RUNTIME_DIR/aiclipse_config.py" jupyter --dir "$dir" --root "$ROOT" --ip "$LISTEN" \
    --port "$port" "${ORIGIN_ARGS[@]}")" || die "jupyter: cannot write its config in $dir (see above)"
  detach "$lab" --config="$dir/jupyter_server_config.json" --ServerApp.log_level=WARN
  log "jupyter: port $port, $line"
}

start_filebrowser() {
  local dir="$STATE/filebrowser" port="${FILEBROWSER_PORT:-8080}" user="${FILEBROWSER_USER:-admin}"
  local db hash generated=""
  db="$dir/filebrowser.db"
  if ! is_on "${FILEBROWSER_ENABLE:-1}"; then
    log "filebrowser: off (FILEBROWSER_ENABLE=${FILEBROWSER_ENABLE:-})"
    return
  fi
  if [[ ! -x "$FILEBROWSER_BIN" ]]; then
    log "filebrowser: off (no binary at $FILEBROWSER_BIN)"
    return
  fi
  user_dir "$dir"
  if [[ -f "$db" ]]; then
    detach "$FILEBROWSER_BIN" -d "$db" -a "$LISTEN" -p "$port" -r "$ROOT"
    log "filebrowser: port $port, database $db (credentials as set at first start)"
    return
  fi
  if [[ ! -v "SECRETS[FILEBROWSER_PASSWORD]" ]]; then
    SECRETS[FILEBROWSER_PASSWORD]="$(root_python "$RUNTIME_DIR/aiclipse_config.py" token)"
    generated=1
  fi
  hash="$(with_secrets FILEBROWSER_PASSWORD -- root_python "$RUNTIME_DIR/aiclipse_config.py" \
    filebrowser-hash)" || die "filebrowser: cannot hash FILEBROWSER_PASSWORD (see above)"
  # First start: FileBrowser's quick setup creates the database and the user from FB_* (the
  # environment, never argv; a bcrypt hash, never the password).
  FB_USERNAME="$user" FB_PASSWORD="$hash" detach "$FILEBROWSER_BIN" -d "$db" \
    -a "$LISTEN" -p "$port" -r "$ROOT"
  if [[ -n "$generated" ]]; then
    log "filebrowser: port $port, user $user, generated password (shown once): ${SECRETS[FILEBROWSER_PASSWORD]}"
  else
    log "filebrowser: port $port, user $user, password from FILEBROWSER_PASSWORD, database $db"
  fi
  unset "SECRETS[FILEBROWSER_PASSWORD]"
}

# ComfyUI listens on 127.0.0.1:$COMFY_INTERNAL_PORT; the port users reach ($COMFY_PORT) is
# Caddy's, which asks for the user and token (basic auth) and lets in only the pod's RunPod
# proxy origin, AICLIPSE_ALLOWED_ORIGINS and its own. It runs as its own user, so ComfyUI
# (and its custom nodes) can read neither its config nor the token file.
start_proxy() {
  local dir="$STATE/proxy" line group=() run_as=() home="$PROXY_HOME"
  COMFY_BIND=127.0.0.1
  COMFY_BIND_PORT="$COMFY_INTERNAL_PORT"
  if is_on "${COMFY_NO_AUTH:-0}"; then
    COMFY_BIND="${COMFY_LISTEN:-$LISTEN}"
    COMFY_BIND_PORT="$COMFY_PORT"
    log "comfyui: WARNING: COMFY_NO_AUTH=1: ComfyUI answers anyone on $COMFY_BIND:$COMFY_PORT (no proxy, no credential)"
    return
  fi
  [[ -x "$CADDY_BIN" ]] ||
    die "comfyui: no proxy at $CADDY_BIN (the image installs caddy); COMFY_NO_AUTH=1 opens ComfyUI without one"
  if [[ $EUID -eq 0 ]]; then
    id -u "$PROXY_USER" >/dev/null 2>&1 || die "comfyui: the proxy's user '$PROXY_USER' does not exist"
    install -d -m 0750 -o root -g "$(id -g "$PROXY_USER")" "$dir"
    install -d -m 0700 -o "$(id -u "$PROXY_USER")" -g "$(id -g "$PROXY_USER")" "$home"
    group=(--group "$(id -g "$PROXY_USER")")
    run_as=(setpriv --reuid="$(id -u "$PROXY_USER")" --regid="$(id -g "$PROXY_USER")" --init-groups --)
  else
    home="$dir/home"
    install -d -m 0700 "$dir" "$home"
  fi
  origin_args "$COMFY_PORT"
  line="$(with_secrets COMFY_TOKEN -- root_python "$RUNTIME_DIR/aiclipse_config.py" proxy \
    --dir "$dir" --listen "${COMFY_LISTEN:-$LISTEN}" --port "$COMFY_PORT" \
    --upstream-port "$COMFY_INTERNAL_PORT" --user "${COMFY_USER:-comfy}" "${group[@]}" \
    "${ORIGIN_ARGS[@]}")" || die "comfyui: cannot write the proxy's config in $dir (see above)"
  (
    # Caddy's own folders, private to its user (in /tmp anyone could plant them first).
    export HOME="$home" XDG_CONFIG_HOME="$home/config" XDG_DATA_HOME="$home/data"
    exec "${run_as[@]}" "$CADDY_BIN" run --config "$dir/Caddyfile" --adapter caddyfile &
  )
  log "comfyui: proxy on ${COMFY_LISTEN:-$LISTEN}:$COMFY_PORT -> 127.0.0.1:$COMFY_INTERNAL_PORT, $line"
}

download_models() {
  local manifests=() status=0
  [[ -f "$MODELS_MANIFEST" ]] && manifests+=(--manifest "$MODELS_MANIFEST")
  [[ -f "$ROOT/models_manifest.txt" ]] && manifests+=(--manifest "$ROOT/models_manifest.txt")
  if ! is_on "${MODELS_DOWNLOAD:-1}" || [[ ${#manifests[@]} -eq 0 ]]; then
    log "models: nothing to download (MODELS_DOWNLOAD=${MODELS_DOWNLOAD:-1}, no manifest found)"
    return
  fi
  # -E -s: no PYTHON* variable, no user site; -u: its lines reach the log as they come.
  local cmd=(with_secrets HF_TOKEN CIVITAI_TOKEN -- as_models "$PYTHON" -E -s -u
    "$RUNTIME_DIR/download_models.py" "${manifests[@]}"
    --models-dir "$ROOT/models" --jobs "${MODELS_JOBS:-3}")
  if is_on "${MODELS_ASYNC:-0}"; then
    (models_in_background "${cmd[@]}" &)
    log "models: downloading in the background as $MODELS_USER (MODELS_ASYNC=1); a 'models: done' line follows"
    return
  fi
  log "models: downloading before ComfyUI starts as $MODELS_USER (${MODELS_JOBS:-3} at a time)"
  "${cmd[@]}" || status=$?
  if [[ $status -eq 0 ]]; then
    log "models: all present"
  elif is_on "${MODELS_REQUIRED:-0}"; then
    die "models: download_models.py exited $status and MODELS_REQUIRED=1"
  else
    log "models: download_models.py exited $status (see above); starting ComfyUI anyway"
  fi
}

# The shell that waits for a background download (root, to log its end) keeps no secret:
# the downloader got its tokens when it was started.
models_in_background() {
  local status=0 pid
  "$@" &
  pid=$!
  SECRETS=()
  wait "$pid" || status=$?
  if [[ $status -eq 0 ]]; then
    log "models: done, all present"
  else
    log "models: done with failures (download_models.py exited $status, see above)"
  fi
}

# Runtime node installs run as the runtime user, never as root (the manifest and every
# requirement are the user's to write). The packages go into a venv of the runtime user's
# own that sees the image's packages (a .pth file); ComfyUI then runs with its Python.
nodes_python() {
  local venv="$RUNTIME_HOME/.local/share/aiclipse/nodes-venv" base own
  if [[ ! -x "$venv/bin/python" ]]; then
    as_user "$PYTHON" -m venv --without-pip "$venv" || die "nodes: cannot make $venv"
  fi
  base="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  own="$(as_user "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  # shellcheck disable=SC2016 # $1 and $2 are the inner sh's
  as_user sh -c 'printf "%s\n" "$1" >"$2"' sh \
    "import site; site.addsitedir('$base')" "$own/aiclipse-image-packages.pth"
  NODES_PYTHON="$venv/bin/python"
}

install_nodes() {
  local status=0
  if ! is_on "${NODES_INSTALL:-0}"; then
    log "nodes: runtime node install off (NODES_INSTALL=1 and $NODES_MANIFEST turn it on)"
    return
  fi
  if [[ ! -f "$NODES_MANIFEST" ]]; then
    log "nodes: no manifest at $NODES_MANIFEST; nothing to install"
    return
  fi
  nodes_python
  COMFY_PYTHON="$NODES_PYTHON"
  log "nodes: installing from $NODES_MANIFEST as $RUNTIME_USER, packages into ${NODES_PYTHON%/bin/python} (commit-pinned, one node at a time)"
  as_user "$NODES_PYTHON" "$RUNTIME_DIR/install_nodes.py" --manifest "$NODES_MANIFEST" \
    --custom-nodes "$ROOT/custom_nodes" --python "$NODES_PYTHON" || status=$?
  if [[ $status -eq 0 ]]; then
    log "nodes: all installed"
  elif is_on "${NODES_REQUIRED:-0}"; then
    die "nodes: install_nodes.py exited $status and NODES_REQUIRED=1"
  else
    log "nodes: install_nodes.py exited $status (failed nodes named above); starting ComfyUI anyway"
  fi
}

start_comfyui() {
  local args extra=() user_paths="$ROOT/extra_model_paths.user.yaml" name pass=()
  local list="${AICLIPSE_PASS_ENV:-}"
  read -r -a extra <<<"${COMFY_ARGS:-}"
  args=(--listen "$COMFY_BIND" --port "$COMFY_BIND_PORT")
  args+=(--extra-model-paths-config "$MODEL_PATHS_CONFIG")
  [[ -f "$user_paths" ]] && args+=("$user_paths")
  args+=(--output-directory "$ROOT/output" --input-directory "$ROOT/input"
    --user-directory "$ROOT/user")
  # The comfyui-manager package runs only when ComfyUI is told to (base-common sets the mode).
  if [[ "$MANAGER_MODE" == package && " ${extra[*]} " != *" --enable-manager "* ]]; then
    args+=(--enable-manager)
  fi
  # ComfyUI gets only the secrets AICLIPSE_PASS_ENV names (e.g. an API node's key).
  for name in ${list//,/ }; do
    pass+=("$name")
  done
  log "comfyui: starting on $COMFY_BIND:$COMFY_BIND_PORT as $RUNTIME_USER (COMFY_ARGS: ${COMFY_ARGS:-none}; secrets passed: ${pass[*]:-none})"
  cd "$COMFY_DIR"
  for name in "${pass[@]}"; do
    if [[ -v "SECRETS[$name]" ]]; then export "${name?}=${SECRETS[$name]}"; fi
  done
  SECRETS=()
  exec_as_user "$COMFY_PYTHON" main.py "${args[@]}" "${extra[@]}"
}

main() {
  scrub_environment "$@"
  COMFY_PYTHON="$PYTHON"
  validate_environment
  resolve_user
  prepare_volume
  write_model_paths
  copy_workflows
  setup_manager
  setup_ssh
  start_jupyter
  start_filebrowser
  start_proxy
  install_nodes
  download_models
  start_comfyui
}

main "$@"
