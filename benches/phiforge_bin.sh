# Sourced by the benchmarks: sets `bin` to the phiforge binary to time: PHIFORGE when given (a
# binary built elsewhere, or an older build to compare), else the release build of the checkout
# at `root`, built first.
if [ -n "${PHIFORGE:-}" ]; then
  bin=$PHIFORGE
else
  (cd "$root" && cargo build --release -j 2 -q)
  bin=${CARGO_TARGET_DIR:-$root/target}/release/phiforge
fi
