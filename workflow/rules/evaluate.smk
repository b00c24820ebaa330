# Every run under every protocol of params/grid.yaml (METHOD.md §6: paper and strict).


rule evaluate:
    input:
        done=f"{RUN_DIR}/done",
        target=lambda wildcards: prepared(run_of(wildcards).datasets[1]),
    output:
        metrics=f"{RUN_DIR}/eval/{{protocol}}/metrics.json",
        confusion=f"{RUN_DIR}/eval/{{protocol}}/confusion.npy",
    params:
        run_dir=lambda wildcards: run_of(wildcards).run_dir,
    log:
        f"{RUN_DIR}/logs/evaluate_{{protocol}}.log",
    conda:
        ENV
    threads: resource("evaluate", "threads")
    resources:
        gpu=resource("evaluate", "gpu"),
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    shell:
        "hqtd evaluate run_dir={params.run_dir} protocol={wildcards.protocol} > {log} 2>&1"
