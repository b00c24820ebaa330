# Tables and figures of the grid, from the runs' evaluation files (and, for the figures, their
# validation logs and checkpoints) under results/runs/<grid>, the default --runs of both commands.
# Both go into `snakemake --report`.


rule tables:
    input:
        metrics_files(),
    output:
        report(
            directory(TABLES),
            patterns=["{name}.html"],
            category="Tables",
            caption="../report/tables.rst",
        ),
    params:
        select=report_args(),
    log:
        "logs/tables.log",
    conda:
        ENV
    threads: resource("report", "threads")
    resources:
        gpu=0,
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    shell:
        "hqtd tables --out {output} {params.select} > {log} 2>&1"


rule figures:
    input:
        metrics=metrics_files(),
        done=done_files(),
        target=prepared(GRID.target),
    output:
        report(
            directory(FIGURES),
            patterns=["{name}.png"],
            category="Figures",
            caption="../report/figures.rst",
        ),
    params:
        select=report_args(),
    log:
        "logs/figures.log",
    conda:
        ENV
    threads: resource("report", "threads")
    resources:
        gpu=resource("report", "gpu"),
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    shell:
        "hqtd figures --out {output} {params.select} > {log} 2>&1"
