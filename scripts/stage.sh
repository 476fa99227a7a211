# Sourced by pipeline.sh and reproduce.sh: cached, resumable stages.

# stage NAME RESUMABLE COMMAND...: runs COMMAND --out DIR in DIR=$OUT/NAME-<key> unless DIR holds a
# finished run of it (a .done marker); $OUT/NAME links to DIR. With RESUMABLE=1 an interrupted run
# continues with --resume. Sets STAGE_DIR. Needs OUT and START.
# The key covers what the run depends on: the command line, and the content of every file it names
# (the program itself, so a rebuilt binary is a new key; recipes; checkpoints; the FILE of a
# --set KEY=FILE). Files a recipe names inside itself are covered when they also appear on the
# command line (reproduce.sh passes every teacher with --set). DIR/.inputs lists the files and
# their hashes; when NAME last ran with other inputs, the line says which changed.
stage_inputs() {
  local a f
  for a in "$@"; do
    if [ -f "$a" ]; then
      f=$a
    elif [[ $a == *=* && -f ${a#*=} ]]; then
      f=${a#*=}
    else
      continue
    fi
    printf '%s %s\n' "$(sha256sum <"$f" | cut -c1-16)" "$f"
  done
}

stage() {
  local name=$1 resumable=$2
  shift 2
  local key dir inputs
  inputs=$(stage_inputs "$@")
  key=$( (printf '%s\n' "$@"; printf '%s\n' "$inputs") | sha256sum | cut -c1-12)
  dir=$OUT/$name-$key
  STAGE_DIR=$dir
  mkdir -p "$(dirname "$OUT/$name")"
  local prev=""
  [ -L "$OUT/$name" ] && prev=$(readlink "$OUT/$name")
  ln -sfn "$(basename "$dir")" "$OUT/$name"
  if [ -f "$dir/.done" ]; then
    echo "== $name: done before with the same command and inputs, reusing $dir"
    return
  fi
  if [ -n "$prev" ] && [ "$prev" != "$(basename "$dir")" ] && [ -f "$(dirname "$dir")/$prev/.inputs" ]; then
    local changed
    changed=$(diff <(sort "$(dirname "$dir")/$prev/.inputs") <(printf '%s\n' "$inputs" | sort) |
      sed -n 's/^> [0-9a-f]* //p' | tr '\n' ' ' || true)
    changed=${changed% }
    echo "== $name: inputs changed since $prev (${changed:-the command line}); running again"
  fi
  echo "== $name ($((SECONDS - START)) s): $*"
  mkdir -p "$dir"
  printf '%s\n' "$inputs" > "$dir/.inputs"
  local extra=()
  ((resumable)) && extra=(--resume)
  local t0=$SECONDS
  "$@" --out "$dir" "${extra[@]}" 2>&1 | tee "$dir/log.txt"
  echo "$((SECONDS - t0))" > "$dir/.seconds"
  touch "$dir/.done"
}
