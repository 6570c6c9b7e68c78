# Policies: one job per (dataset, mode entry, seed); an entry runs its method, and methods that
# need an ensemble read the entry's.


rule train_policy:
    input:
        unpack(policy_inputs),
    output:
        policy="results/{dataset}/policies/{mode}/seed{seed}/policy.safetensors",
        meta="results/{dataset}/policies/{mode}/seed{seed}/policy.json",
        progress="results/{dataset}/policies/{mode}/seed{seed}/progress.csv",
        evaluation="results/{dataset}/policies/{mode}/seed{seed}/eval.json",
    log:
        "logs/{dataset}/policies/{mode}/seed{seed}.log",
    priority: policy_priority
    conda:
        "../../envs/ombrl.yaml"
    threads: STUDY["threads"]
    params:
        code=lambda w: code("policy", method_of(w)),
        device=STUDY["device"],
        flags=policy_flags,
        outdir=lambda w: policy_dir(w.dataset, w.mode, w.seed),
        evaluation=lambda w: STUDY["evaluation"],
    shell:
        "ombrl train-policy --dataset {input.dataset} {params.flags}"
        " --eval-every {params.evaluation[every]} --eval-episodes {params.evaluation[episodes]}"
        " --eval-seed {params.evaluation[seed]} --seed {wildcards.seed} --threads {threads} --device {params.device} --quiet"
        " --output {params.outdir} > {log} 2>&1"
