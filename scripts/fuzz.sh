#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of the targets in fuzz/,
# on the stable toolchain: installs cargo-fuzz if missing, builds every
# target, then runs them one after another (niced), each for --seconds N
# or --runs N executions (whichever ends first when both are given; 300
# seconds when neither is), and prints per target the
# executions, the rate and any crash with its reproducer.
#
#   scripts/fuzz.sh [--seconds N] [--runs N] [--dev] [--targets a,b]
#                   [--sanitizer none|address] [--regen-seeds] [--build-only]
#
# --dev           unoptimized build (faster to build, slower to run: CI)
# --sanitizer     none (default, stable) or address (needs RUSTC_BOOTSTRAP=1,
#                 set here, on the stable toolchain)
# --regen-seeds   rewrite fuzz/seeds/ from the seed generator first
#                 (cargo run --example seeds)
#
# Inputs: fuzz/seeds/TARGET (committed) and fuzz/corpus/TARGET (grows,
# not committed); dictionaries in fuzz/dict/. Crashes land in
# fuzz/artifacts/TARGET/; logs in fuzz/logs/TARGET.log. Replay one with
#   fuzz/target/x86_64-unknown-linux-gnu/release/TARGET REPRODUCER
# Exit status: 1 if any target crashed.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

seconds=''
runs=''
dev=''
sanitizer=none
only=''
regen=''
build_only=''
while (($#)); do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --dev) dev=1; shift ;;
        --targets) only=$2; shift 2 ;;
        --sanitizer) sanitizer=$2; shift 2 ;;
        --regen-seeds) regen=1; shift ;;
        --build-only) build_only=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

FUZZ=$LEAPIO_REPO/fuzz
cd "$FUZZ"
need_cmd cargo "install the Rust toolchain (https://rustup.rs)"

# cargo-fuzz: installed once (the version is pinned for reproducible flags).
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz --version 0.13.2
fi

build_args=(-s "$sanitizer")
profile=release
if [[ -n $dev ]]; then
    build_args+=(--dev)
    profile=debug
fi
if [[ $sanitizer != none ]]; then
    # Sanitizers are -Z flags: accepted by the stable compiler this way.
    export RUSTC_BOOTSTRAP=1
fi

targets=()
while read -r t; do targets+=("$t"); done < <(cargo fuzz list)
if [[ -n $only ]]; then
    IFS=, read -r -a targets <<< "$only"
fi

if [[ -n $regen ]]; then
    log "regenerating fuzz/seeds"
    rm -rf seeds
    cargo run -q --example seeds -- seeds
fi

t0=$(now)
log "building ${#targets[@]} fuzz targets (${build_args[*]})"
for t in "${targets[@]}"; do
    cargo fuzz build "${build_args[@]}" "$t" 2>&1 | grep -v '^\s*Compiling\|^\s*Finished' >&2 || true
    [[ -x target/x86_64-unknown-linux-gnu/$profile/$t ]] || die "fuzz target $t did not build"
done
# The seed generator is not a fuzz target: check it still compiles
# against the crates' messages.
cargo check -q --example seeds || die "the seed generator (fuzz/examples/seeds.rs) does not compile"
log "built in $(elapsed "$t0") s"
[[ -n $build_only ]] && exit 0

# The link's targets read JSON: its tokens help. The others read their
# input as structured choices (fuzz/src/lib.rs), where tokens do not.
dict_of() {
    case $1 in
        link_*) echo "-dict=dict/link.dict" ;;
    esac
}

mkdir -p logs
crashed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    limit=()
    [[ -n $runs ]] && limit+=(-runs="$runs")
    [[ -n $seconds || -z $runs ]] && limit+=(-max_total_time="${seconds:-300}")
    # shellcheck disable=SC2046
    args=("corpus/$t" "seeds/$t" $(dict_of "$t") "${limit[@]}"
        -artifact_prefix="artifacts/$t/" -print_final_stats=1
        -rss_limit_mb=2048 -timeout=20 -max_len=8192)
    log "fuzzing $t (${limit[*]})"
    s=$(now)
    rc=0
    # With autogroup scheduling (the default on Debian) nice only ranks
    # threads within a session; the group's own nice makes the fuzzer yield
    # to everything else on the machine too.
    [[ -w /proc/self/autogroup ]] && echo 19 > /proc/self/autogroup 2>/dev/null || true
    nice -n 19 "target/x86_64-unknown-linux-gnu/$profile/$t" "${args[@]}" > "logs/$t.log" 2>&1 || rc=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "logs/$t.log" | tail -n 1)
    rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "logs/$t.log" | tail -n 1)
    repro=$(sed -n '/slow-unit-/d; s/.*Test unit written to \(.*\)$/\1/p' "logs/$t.log" | tail -n 1)
    line=$(printf '%-12s %12s execs %8s/s %6ss' "$t" "${execs:-?}" "${rate:-?}" "$(elapsed "$s")")
    # A slow unit is reported, not a failure: an input that took over 10 s
    # once (a busy machine, a stopped process) but finished.
    slow=$(sed -n 's/.*Test unit written to \(.*slow-unit-.*\)$/\1/p' "logs/$t.log" | tail -n 1)
    [[ -n $slow ]] && line+="  (slow unit: fuzz/$slow)"
    if ((rc != 0)) || [[ -n $repro ]]; then
        crashed=1
        line+="  CRASH: fuzz/${repro:-?} (log fuzz/logs/$t.log)"
        grep -m1 -A2 'panicked at\|ERROR: libFuzzer' "logs/$t.log" | sed 's/^/    /' >&2 || true
    fi
    log "$line"
    summary+=("$line")
done
log "==== fuzzing summary ($(elapsed "$t0") s)"
for l in "${summary[@]}"; do log "$l"; done
exit "$crashed"
