#!/usr/bin/env bash
# Builds every fuzz target and runs it over its seed corpus (fuzz/seeds/TARGET) plus a bounded
# number of generated inputs. With cargo-fuzz and a nightly toolchain use `cargo fuzz run TARGET`
# for real coverage-guided runs; this smoke run works on stable.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
# The fuzz workspace builds into its own target directory, whatever the caller's is.
export CARGO_TARGET_DIR="$PWD/target"
# The instrumentation cargo-fuzz adds, minus the sanitizer (which needs nightly).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps these flags off build scripts (as cargo-fuzz does).
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --quiet --bins --target "$host"
for target in $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^labelflow-fuzz$'); do
  seeds="seeds/$target"
  # New inputs go to the first directory: a scratch corpus, so the seeds stay as committed.
  scratch="target/corpus/$target"
  mkdir -p "$scratch"
  echo "fuzz: $target"
  ./target/"$host"/debug/"$target" -runs=20000 -max_len=4096 "$scratch" "$seeds" >/dev/null 2>"target/$target.log" || {
    tail -30 "target/$target.log"; exit 1; }
done
