# Sourced by the before/after scripts: builds ringport at REV (in a temporary worktree, with a
# target folder of its own that is kept between runs, target/bench-before) and at the working
# tree, as release binaries $work/before and $work/after. The two builds must not share a target
# folder: the workspace's path crates get the same unit names in both, and cargo then took the
# other tree's fresh output for up to date, so "after" could silently be the old code. Sets `root`, `work` and `pid`
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
(cd "$work/src" && CARGO_TARGET_DIR="$root/target/bench-before" cargo build --release -q -p "$old_name")
cp "target/bench-before/release/$old_name" "$work/before"
cargo build --release -q -p ringport
cp target/release/ringport "$work/after"
