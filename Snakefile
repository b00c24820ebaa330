# The experiment DAG of params/grid.yaml: synth -> prepare -> train -> evaluate -> tables, figures.
#   snakemake --cores 2                                  # the default grid (demo), mini benchmark
#   snakemake --cores 8 --config grid=paper data_root=/path/to/data --use-conda
# The rules live in workflow/; this file adds the default target.


include: "workflow/Snakefile"


# Every run's evaluations are targets of their own: Snakemake does not remake an existing output
# for an input that is merely missing, so with only the tables and figures named, a variant or
# seed added to a grid whose tables exist would never be trained.
rule all:
    default_target: True
    input:
        metrics_files(),
        TABLES,
        FIGURES,
