# One training run per benchmark x method x seed. Supervised methods (source_only, oracle) start
# from the model's init; adaptation methods from the last checkpoint of their method's
# source_method (same benchmark and seed). Only the `done` marker that `hqtd train` writes last is
# declared: Snakemake deletes a rerun job's outputs first, and `hqtd train` resumes from the
# checkpoints and logs it keeps in the run directory. `done` is workflow state (git-ignored): a
# fresh clone reruns the job, which finishes at once when the run's checkpoints are there.


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
