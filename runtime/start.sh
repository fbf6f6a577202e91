#!/usr/bin/env bash
# aiclipse runtime: PID 1's child under tini (`tini -g -- start.sh`). Prepares the volume,
# starts the side services with authentication, downloads the models, then execs ComfyUI as
# the runtime user so signals reach it. Safe to run again on the same volume: every step
# checks before it writes. One log line per step; no secret is ever printed (the only value
# printed is a token/password generated here, once, when it is generated).
# Environment variables: docs/runtime.md.
set -euo pipefail

# ---- configuration -------------------------------------------------------------------------
ROOT="${AICLIPSE_ROOT:-/workspace/aiclipse}"
STATE="$ROOT/.aiclipse"
RUNTIME_DIR="${AICLIPSE_RUNTIME_DIR:-$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")}"
RUNTIME_USER="${RUNTIME_USER:-comfy}"
COMFY_DIR="${COMFY_DIR:-/opt/ComfyUI}"
PYTHON="${AICLIPSE_PYTHON:-/opt/venv/bin/python}"
WORKFLOWS_TEMPLATE_DIR="${WORKFLOWS_TEMPLATE_DIR:-/opt/workflows}"
MANAGER_CONFIG="${AICLIPSE_MANAGER_CONFIG:-/opt/aiclipse/manager-config.ini}"
MANAGER_MODE="${AICLIPSE_MANAGER_MODE:-git}" # package: ComfyUI starts it (--enable-manager)
MODELS_MANIFEST="${MODELS_MANIFEST:-/manifests/models_manifest.txt}"
NODES_MANIFEST="${NODES_MANIFEST:-$ROOT/nodes_manifest.txt}"
FILEBROWSER_BIN="${FILEBROWSER_BIN:-/usr/local/bin/filebrowser}"
LISTEN="${AICLIPSE_LISTEN:-0.0.0.0}" # the address every service listens on
DATA_DIRS=(models output input user custom_nodes workflows)

log() { printf '[aiclipse] %s\n' "$*"; }
die() {
  log "ERROR: $*" >&2
  exit 1
}
is_on() { [[ "${1:-}" =~ ^(1|true|yes|on)$ ]]; }

# Run a command as the runtime user (or as we are, when the container was started non-root).
as_user() {
  if [[ $EUID -eq 0 ]]; then
    HOME="$RUNTIME_HOME" USER="$RUNTIME_USER" LOGNAME="$RUNTIME_USER" \
      setpriv --reuid="$RUNTIME_UID" --regid="$RUNTIME_GID" --init-groups -- "$@"
  else
    "$@"
  fi
}

# A private folder of the runtime user's (under the root-owned state folder, when root).
user_dir() {
  if [[ $EUID -eq 0 ]]; then
    install -d -m 0700 -o "$RUNTIME_UID" -g "$RUNTIME_GID" "$1"
  else
    install -d -m 0700 "$1"
  fi
}

# Start a long-running service detached from this shell: it is re-parented to tini, which
# reaps it, and stays in tini's process group, so `docker stop` (tini -g) reaches it too.
detach() { ("$@" &) ; }

# ---- steps ---------------------------------------------------------------------------------
resolve_user() {
  if [[ $EUID -ne 0 ]]; then
    RUNTIME_USER="$(id -un)"
  fi
  RUNTIME_UID="$(id -u "$RUNTIME_USER")" || die "runtime user '$RUNTIME_USER' does not exist"
  RUNTIME_GID="$(id -g "$RUNTIME_USER")"
  RUNTIME_HOME="$(getent passwd "$RUNTIME_USER" | cut -d: -f6)"
  log "user: $RUNTIME_USER ($RUNTIME_UID:$RUNTIME_GID), volume $ROOT, ComfyUI $COMFY_DIR"
}

prepare_volume() {
  local dir fixed=0
  mkdir -p "$ROOT" "$STATE"
  for dir in "${DATA_DIRS[@]}"; do
    mkdir -p "$ROOT/$dir"
  done
  if [[ $EUID -eq 0 ]]; then
    chown "$RUNTIME_UID:$RUNTIME_GID" "$ROOT"
    chown root:root "$STATE"
    chmod 0755 "$STATE"
    # Only what is not already ours: a warm volume is walked (metadata only), not rewritten.
    fixed="$(find "${DATA_DIRS[@]/#/$ROOT/}" \( ! -uid "$RUNTIME_UID" -o ! -gid "$RUNTIME_GID" \) \
      -print -exec chown -h "$RUNTIME_UID:$RUNTIME_GID" {} + | wc -l)"
  fi
  log "volume: ${DATA_DIRS[*]} ready under $ROOT ($fixed ownerships fixed)"
}

write_model_paths() {
  MODEL_PATHS_CONFIG="$STATE/extra_model_paths.yaml"
  log "model paths: $("$PYTHON" "$RUNTIME_DIR/aiclipse_config.py" model-paths \
    --root "$ROOT" --config "$MODEL_PATHS_CONFIG")"
  if [[ $EUID -eq 0 ]]; then
    find "$ROOT/models" \( ! -uid "$RUNTIME_UID" -o ! -gid "$RUNTIME_GID" \) \
      -exec chown -h "$RUNTIME_UID:$RUNTIME_GID" {} +
  fi
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
# the image's security level there, and never let an older config weaken it. The package
# (AICLIPSE_MANAGER_MODE=package) reads user/__manager only; a clone that path or the old one.
setup_manager() {
  [[ -f "$MANAGER_CONFIG" ]] || { log "manager: no $MANAGER_CONFIG in the image, skipped"; return; }
  local line
  line="$(as_user "$PYTHON" "$RUNTIME_DIR/aiclipse_config.py" manager-config \
    --source "$MANAGER_CONFIG" --user-dir "$ROOT/user" --mode "$MANAGER_MODE")" ||
    die "manager: cannot enforce the image's security level under $ROOT/user (see above)"
  log "$line"
}

setup_ssh() {
  local keys port="${SSH_PORT:-22}" conf=/etc/ssh/aiclipse_sshd_config hostkeys="$STATE/ssh"
  local line invalid=0
  keys=""
  while IFS= read -r line; do
    line="${line%$'\r'}"
    [[ -z "${line//[[:space:]]/}" || "$line" == '#'* ]] && continue
    if ssh-keygen -l -f /dev/stdin <<<"$line" >/dev/null 2>&1; then
      [[ $'\n'"$keys" == *$'\n'"$line"$'\n'* ]] || keys+="$line"$'\n'
    else
      invalid=$((invalid + 1))
    fi
  done < <(printf '%s\n%s\n' "${PUBLIC_KEY:-}" "${SSH_PUBLIC_KEY:-}")
  if [[ -z "$keys" ]]; then
    if [[ $invalid -gt 0 ]]; then
      log "ssh: off ($invalid line(s) of PUBLIC_KEY/SSH_PUBLIC_KEY are not public keys)"
    else
      log "ssh: off (set PUBLIC_KEY or SSH_PUBLIC_KEY to enable key-only login)"
    fi
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
  install -d -m 0700 -o "$RUNTIME_UID" -g "$RUNTIME_GID" "$RUNTIME_HOME/.ssh"
  printf '%s' "$keys" >"$RUNTIME_HOME/.ssh/authorized_keys.new"
  chown "$RUNTIME_UID:$RUNTIME_GID" "$RUNTIME_HOME/.ssh/authorized_keys.new"
  chmod 0600 "$RUNTIME_HOME/.ssh/authorized_keys.new"
  mv -f "$RUNTIME_HOME/.ssh/authorized_keys.new" "$RUNTIME_HOME/.ssh/authorized_keys"
  # sshd without PAM refuses a locked account ('!'): no password at all ('*') is what we want.
  if [[ "$(getent shadow "$RUNTIME_USER" | cut -d: -f2)" == '!'* ]]; then
    usermod -p '*' "$RUNTIME_USER"
  fi
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
  log "ssh: key-only for $RUNTIME_USER on port $port ($(grep -c . <<<"$keys") key(s), $invalid invalid line(s); host keys in $hostkeys)"
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
  line="$(as_user "$PYTHON" "$RUNTIME_DIR/aiclipse_config.py" jupyter \
    --dir "$dir" --root "$ROOT" --ip "$LISTEN" --port "$port")"
  detach as_user "$lab" --config="$dir/jupyter_server_config.json" \
    --ServerApp.log_level=WARN
  log "jupyter: port $port, $line"
}

start_filebrowser() {
  local dir="$STATE/filebrowser" port="${FILEBROWSER_PORT:-8080}" user="${FILEBROWSER_USER:-admin}"
  local db password hash generated=""
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
    detach as_user "$FILEBROWSER_BIN" -d "$db" -a "$LISTEN" -p "$port" -r "$ROOT"
    log "filebrowser: port $port, database $db (credentials as set at first start)"
    return
  fi
  password="${FILEBROWSER_PASSWORD:-}"
  if [[ -z "$password" ]]; then
    password="$("$PYTHON" "$RUNTIME_DIR/aiclipse_config.py" token)"
    generated=1
  fi
  hash="$(FILEBROWSER_PASSWORD="$password" "$PYTHON" "$RUNTIME_DIR/aiclipse_config.py" \
    filebrowser-hash)" || die "filebrowser: FILEBROWSER_PASSWORD must be at least 12 characters"
  # First start: FileBrowser's quick setup creates the database and the user from FB_* (the
  # environment, never argv; a bcrypt hash, never the password).
  FB_USERNAME="$user" FB_PASSWORD="$hash" detach as_user "$FILEBROWSER_BIN" -d "$db" \
    -a "$LISTEN" -p "$port" -r "$ROOT"
  if [[ -n "$generated" ]]; then
    log "filebrowser: port $port, user $user, generated password (shown once): $password"
  else
    log "filebrowser: port $port, user $user, password from FILEBROWSER_PASSWORD, database $db"
  fi
}

download_models() {
  local manifests=() status=0
  [[ -f "$MODELS_MANIFEST" ]] && manifests+=(--manifest "$MODELS_MANIFEST")
  [[ -f "$ROOT/models_manifest.txt" ]] && manifests+=(--manifest "$ROOT/models_manifest.txt")
  if ! is_on "${MODELS_DOWNLOAD:-1}" || [[ ${#manifests[@]} -eq 0 ]]; then
    log "models: nothing to download (MODELS_DOWNLOAD=${MODELS_DOWNLOAD:-1}, no manifest found)"
    return
  fi
  local cmd=(as_user "$PYTHON" "$RUNTIME_DIR/download_models.py" "${manifests[@]}"
    --models-dir "$ROOT/models" --jobs "${MODELS_JOBS:-3}")
  if is_on "${MODELS_ASYNC:-0}"; then
    detach models_in_background "${cmd[@]}"
    log "models: downloading in the background (MODELS_ASYNC=1); a 'models: done' line follows"
    return
  fi
  log "models: downloading before ComfyUI starts (${MODELS_JOBS:-3} at a time)"
  "${cmd[@]}" || status=$?
  if [[ $status -eq 0 ]]; then
    log "models: all present"
  elif is_on "${MODELS_REQUIRED:-0}"; then
    die "models: download_models.py exited $status and MODELS_REQUIRED=1"
  else
    log "models: download_models.py exited $status (see above); starting ComfyUI anyway"
  fi
}

models_in_background() {
  local status=0
  "$@" || status=$?
  if [[ $status -eq 0 ]]; then
    log "models: done, all present"
  else
    log "models: done with failures (download_models.py exited $status, see above)"
  fi
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
  log "nodes: installing from $NODES_MANIFEST (commit-pinned, one node at a time)"
  "$PYTHON" "$RUNTIME_DIR/install_nodes.py" --manifest "$NODES_MANIFEST" \
    --custom-nodes "$ROOT/custom_nodes" --owner "$RUNTIME_UID:$RUNTIME_GID" || status=$?
  if [[ $status -eq 0 ]]; then
    log "nodes: all installed"
  elif is_on "${NODES_REQUIRED:-0}"; then
    die "nodes: install_nodes.py exited $status and NODES_REQUIRED=1"
  else
    log "nodes: install_nodes.py exited $status (failed nodes named above); starting ComfyUI anyway"
  fi
}

start_comfyui() {
  local args extra=() user_paths="$ROOT/extra_model_paths.user.yaml"
  read -r -a extra <<<"${COMFY_ARGS:-}"
  args=(--listen "${COMFY_LISTEN:-$LISTEN}" --port "${COMFY_PORT:-8188}")
  if is_on "${COMFY_CORS:-1}"; then
    args+=(--enable-cors-header ${COMFY_CORS_ORIGIN:+"$COMFY_CORS_ORIGIN"})
  fi
  args+=(--extra-model-paths-config "$MODEL_PATHS_CONFIG")
  [[ -f "$user_paths" ]] && args+=("$user_paths")
  args+=(--output-directory "$ROOT/output" --input-directory "$ROOT/input"
    --user-directory "$ROOT/user")
  # The comfyui-manager package runs only when ComfyUI is told to (base-common sets the mode).
  if [[ "$MANAGER_MODE" == package && " ${extra[*]} " != *" --enable-manager "* ]]; then
    args+=(--enable-manager)
  fi
  log "comfyui: starting on port ${COMFY_PORT:-8188} as $RUNTIME_USER (COMFY_ARGS: ${COMFY_ARGS:-none})"
  cd "$COMFY_DIR"
  if [[ $EUID -eq 0 ]]; then
    exec env HOME="$RUNTIME_HOME" USER="$RUNTIME_USER" LOGNAME="$RUNTIME_USER" \
      setpriv --reuid="$RUNTIME_UID" --regid="$RUNTIME_GID" --init-groups -- \
      "$PYTHON" main.py "${args[@]}" "${extra[@]}"
  fi
  exec "$PYTHON" main.py "${args[@]}" "${extra[@]}"
}

main() {
  resolve_user
  prepare_volume
  write_model_paths
  copy_workflows
  setup_manager
  setup_ssh
  start_jupyter
  start_filebrowser
  install_nodes
  download_models
  start_comfyui
}

main "$@"
