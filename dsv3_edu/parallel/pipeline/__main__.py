"""``torchrun --nproc_per_node 4 -m dsv3_edu.parallel.pipeline --method dualpipe``: one real pipeline step,
checked against a single-process run of the same micro-batches (see ``executor.main``)."""
from .executor import main

main()
