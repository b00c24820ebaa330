# One training run per benchmark x method x seed. Supervised methods (source_only, oracle) start
# from the model's init; adaptation methods from source_only's last checkpoint (same benchmark and
# seed). Only the `done` marker is declared: Snakemake deletes a rerun job's outputs first, and
# `hqtd train` resumes from the checkpoints it keeps in the run directory.


rule train:
    input:
        unpack(train_inputs),
    output:
        done=f"{RUN_DIR}/done",
    params:
        args=train_args,
        launcher=config["launcher"],
    log:
        f"{RUN_DIR}/logs/train.log",
    conda:
        ENV
    threads: resource("train", "threads")
    resources:
        gpu=resource("train", "gpu"),
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
    shell:
        "{params.launcher} hqtd train {params.args} > {log} 2>&1"
