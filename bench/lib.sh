# Shared by the bench/ scripts, sourced after test/e2e/lib.sh (namespaces, agent, cleanup).

# /proc/pressure/cpu "some avg10": the share of the last 10 s in which a runnable task waited for
# a CPU. Recorded with every cell; a cell measured above the script's threshold is run again (the
# machine is shared and noisy: docs/benchmarks.md).
pressure() { awk '/^some/ {sub("avg10=", "", $2); print $2}' /proc/pressure/cpu; }
