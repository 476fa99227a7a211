# Sourced by pipeline.sh and reproduce.sh: cached, resumable stages.
#
# stage NAME RESUMABLE COMMAND...: runs COMMAND --out DIR in DIR=$OUT/NAME-<hash of COMMAND>
# unless DIR holds a finished run of it (a .done marker); $OUT/NAME links to DIR. With
# RESUMABLE=1 an interrupted run continues with --resume. Sets STAGE_DIR. Needs OUT and START.
stage() {
  local name=$1 resumable=$2
  shift 2
  local key dir
  key=$(printf '%s\n' "$@" | sha256sum | cut -c1-12)
  dir=$OUT/$name-$key
  STAGE_DIR=$dir
  mkdir -p "$(dirname "$OUT/$name")"
  ln -sfn "$(basename "$dir")" "$OUT/$name"
  if [ -f "$dir/.done" ]; then
    echo "== $name: done before, reusing $dir"
    return
  fi
  echo "== $name ($((SECONDS - START)) s): $*"
  mkdir -p "$dir"
  local extra=()
  ((resumable)) && extra=(--resume)
  local t0=$SECONDS
  "$@" --out "$dir" "${extra[@]}" 2>&1 | tee "$dir/log.txt"
  echo "$((SECONDS - t0))" > "$dir/.seconds"
  touch "$dir/.done"
}
