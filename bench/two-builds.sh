# Sourced by the before/after scripts: builds ringport at REV (in a temporary worktree that
# shares the target folder, so only the project's own crates are compiled twice) and at the
# working tree, as release binaries $work/before and $work/after. Sets `root`, `work` and `pid`
# (the server a script runs, stopped on exit) and the cleanup trap.
# Usage: . bench/two-builds.sh REV   (from the repository root)
root=$(pwd)
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  git -C "$root" worktree remove --force "$work/src" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
git worktree add -q --detach "$work/src" "$1"
# Revisions from before the rename build a package of the old name.
old_name=$(grep -m1 '^name' "$work/src/Cargo.toml" | sed 's/.*"\(.*\)"/\1/')
(cd "$work/src" && CARGO_TARGET_DIR="$root/target" cargo build --release -q -p "$old_name")
cp "target/release/$old_name" "$work/before"
cargo build --release -q -p ringport
cp target/release/ringport "$work/after"
