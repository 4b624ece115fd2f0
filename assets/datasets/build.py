"""Generate the lab's bundled datasets from templates (deterministic; no network).

    .venv/bin/python assets/datasets/build.py

writes assets/datasets/<name>/{train,test}.jsonl for:

- infra-alpaca     Alpaca rows (instruction / input / output) on Terraform, Kubernetes, Docker,
                   CI/CD and MLOps. Every answer is a correct, minimal config or command.
- banking-intents  banking customer queries -> exactly one intent label (Banking77 label names);
                   the instruction lists the allowed labels so exact-match accuracy is measurable.
- style            short questions whose answers are always in pirate speak: they open with
                   "Arr, matey!" and close with "Yo ho ho!" -- a change visible at a glance.

The cards (README.md) are written by hand next to the data. The JSONL is committed, so
re-running this script is only needed after editing a template; the output is identical
for identical templates (fixed seed, sorted iteration).
"""

from __future__ import annotations

import json
import random
from itertools import product
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234


def write_split(name: str, rows: list[dict], n_test: int, keep_order: int = 0) -> None:
    """Shuffle `rows` and write the first n_test as test, the rest as train. With keep_order=N the
    first N rows are the test split (chosen by the caller) and each split is shuffled on its own."""
    rng = random.Random(SEED)
    if keep_order:
        test, train = rows[:keep_order], rows[keep_order:]
        rng.shuffle(test)
        rng.shuffle(train)
        rows, n_test = test + train, keep_order
    else:
        rows = list(rows)
        rng.shuffle(rows)
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    for split, part in (("test", rows[:n_test]), ("train", rows[n_test:])):
        with (folder / f"{split}.jsonl").open("w") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows) - n_test} train, {n_test} test")


def row(instruction: str, input: str, output: str, category: str) -> dict:
    return {"instruction": instruction, "input": input, "output": output.strip("\n"), "category": category}


# --------------------------------------------------------------------------- infra-alpaca
def terraform_rows() -> list[dict]:
    rows = []
    for bucket in ("app-logs-prod", "ml-artifacts", "static-site-assets", "backup-archive", "data-lake-raw", "terraform-state"):
        rows.append(row(
            "Write Terraform for an AWS S3 bucket with versioning enabled.", f"Bucket name: {bucket}",
            f'''resource "aws_s3_bucket" "this" {{
  bucket = "{bucket}"
}}

resource "aws_s3_bucket_versioning" "this" {{
  bucket = aws_s3_bucket.this.id

  versioning_configuration {{
    status = "Enabled"
  }}
}}''', "terraform"))
        rows.append(row(
            "Write Terraform that blocks all public access to an existing S3 bucket.", f"Bucket resource: aws_s3_bucket.{bucket.replace('-', '_')}",
            f'''resource "aws_s3_bucket_public_access_block" "{bucket.replace('-', '_')}" {{
  bucket = aws_s3_bucket.{bucket.replace('-', '_')}.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}}''', "terraform"))
    for name, cidr in (("main", "10.0.0.0/16"), ("staging", "10.1.0.0/16"), ("analytics", "172.16.0.0/16"), ("shared", "192.168.0.0/20")):
        rows.append(row(
            "Write Terraform for an AWS VPC with DNS hostnames enabled.", f"Name: {name}, CIDR block: {cidr}",
            f'''resource "aws_vpc" "{name}" {{
  cidr_block           = "{cidr}"
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = {{
    Name = "{name}"
  }}
}}''', "terraform"))
    for (service, port), cidr in product((("https", 443), ("http", 80), ("ssh", 22), ("postgres", 5432), ("redis", 6379)),
                                         ("10.0.0.0/16", "0.0.0.0/0")):
        if service in ("ssh", "postgres", "redis") and cidr == "0.0.0.0/0":
            continue  # never open these to the internet, even in an example
        rows.append(row(
            "Write a Terraform AWS security group that allows inbound TCP on one port and all outbound traffic.",
            f"Service: {service}, port: {port}, allowed source: {cidr}",
            f'''resource "aws_security_group" "{service}" {{
  name        = "allow-{service}"
  description = "Allow {service} (TCP {port}) from {cidr}"
  vpc_id      = var.vpc_id

  ingress {{
    from_port   = {port}
    to_port     = {port}
    protocol    = "tcp"
    cidr_blocks = ["{cidr}"]
  }}

  egress {{
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }}
}}''', "terraform"))
    for itype, name in product(("t3.micro", "t3.small", "m5.large"), ("web", "bastion", "worker")):
        rows.append(row(
            "Write Terraform for a single AWS EC2 instance.", f"Name tag: {name}, instance type: {itype}, AMI from variable ami_id",
            f'''resource "aws_instance" "{name}" {{
  ami           = var.ami_id
  instance_type = "{itype}"

  tags = {{
    Name = "{name}"
  }}
}}''', "terraform"))
    for var, typ, default, desc in (("region", "string", '"eu-west-1"', "AWS region to deploy into"),
                                    ("instance_count", "number", "2", "Number of instances"),
                                    ("enable_monitoring", "bool", "true", "Enable detailed monitoring"),
                                    ("allowed_cidrs", "list(string)", '["10.0.0.0/8"]', "CIDR blocks allowed to connect"),
                                    ("environment", "string", '"dev"', "Deployment environment name")):
        rows.append(row(
            "Declare a Terraform input variable.", f"Name: {var}, type: {typ}, default: {default}, description: {desc}",
            f'''variable "{var}" {{
  description = "{desc}"
  type        = {typ}
  default     = {default}
}}''', "terraform"))
    for (bucket, days) in product(("app-logs-prod", "data-lake-raw", "ci-artifacts"), (7, 30, 90)):
        rows.append(row(
            "Write Terraform that deletes objects in an S3 bucket after a number of days.", f"Bucket resource: aws_s3_bucket.{bucket.replace('-', '_')}, expire after {days} days",
            f'''resource "aws_s3_bucket_lifecycle_configuration" "{bucket.replace('-', '_')}" {{
  bucket = aws_s3_bucket.{bucket.replace('-', '_')}.id

  rule {{
    id     = "expire-after-{days}-days"
    status = "Enabled"

    filter {{}}

    expiration {{
      days = {days}
    }}
  }}
}}''', "terraform"))
    for name, expr, desc in (("vpc_id", "aws_vpc.main.id", "ID of the VPC"), ("instance_ip", "aws_instance.web.public_ip", "Public IP of the web instance"),
                             ("bucket_arn", "aws_s3_bucket.this.arn", "ARN of the bucket"), ("sg_id", "aws_security_group.https.id", "ID of the HTTPS security group")):
        rows.append(row("Declare a Terraform output.", f"Name: {name}, value: {expr}, description: {desc}",
                        f'''output "{name}" {{
  description = "{desc}"
  value       = {expr}
}}''', "terraform"))
    concepts = {
        "What does `terraform init` do?": "`terraform init` prepares a working directory: it downloads the providers and modules the configuration uses and configures the backend where state is stored. Run it first, and again after adding a provider, module or backend.",
        "What does `terraform plan` do?": "`terraform plan` compares the configuration with the current state and the real infrastructure and prints the actions (create, update, destroy) Terraform would take, without changing anything. Save it with `-out=plan.tfplan` to apply exactly that plan.",
        "What does `terraform apply` do?": "`terraform apply` creates, updates or destroys infrastructure so it matches the configuration, after showing the plan and asking for confirmation. `terraform apply plan.tfplan` applies a saved plan without asking again.",
        "How do I format and validate Terraform code?": "Run `terraform fmt -recursive` to rewrite files in the canonical style and `terraform validate` to check that the configuration is syntactically valid and internally consistent.",
        "What is Terraform state and where should a team keep it?": "State is Terraform's record of which real resources belong to which resource blocks. A team should keep it in a remote backend with locking, for example an S3 bucket with a DynamoDB lock table, or Terraform Cloud, never in git.",
        "How do I remove a resource from Terraform state without destroying it?": "Use `terraform state rm <address>`, for example `terraform state rm aws_instance.web`. Terraform forgets the resource; the real resource keeps running.",
        "How do I destroy everything a Terraform configuration manages?": "`terraform destroy` plans and, after confirmation, deletes every resource in the state. To preview first, run `terraform plan -destroy`.",
        "What is the difference between a Terraform variable and a local value?": "A variable is an input set from outside (tfvars, -var, environment `TF_VAR_name`); a local value (`locals { ... }`) is a named expression computed inside the module to avoid repetition.",
    }
    rows += [row(q, "", a, "terraform") for q, a in concepts.items()]
    return rows


def kubernetes_rows() -> list[dict]:
    rows = []
    apps = (("web", "nginx:1.27", 80), ("api", "ghcr.io/acme/api:2.3.1", 8080), ("worker", "python:3.12-slim", 8000),
            ("frontend", "node:22-alpine", 3000), ("metrics", "prom/prometheus:v2.54.1", 9090))
    for (name, image, port), replicas in product(apps, (1, 3)):
        rows.append(row(
            "Write a Kubernetes Deployment manifest.", f"Name: {name}, image: {image}, replicas: {replicas}, container port: {port}",
            f'''apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
        - name: {name}
          image: {image}
          ports:
            - containerPort: {port}''', "kubernetes"))
    for (name, _image, port), stype in product(apps, ("ClusterIP", "NodePort", "LoadBalancer")):
        rows.append(row(
            "Write a Kubernetes Service that exposes a Deployment's pods.", f"App label: {name}, service type: {stype}, port 80 to container port {port}",
            f'''apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  type: {stype}
  selector:
    app: {name}
  ports:
    - port: 80
      targetPort: {port}
      protocol: TCP''', "kubernetes"))
    for (name, _i, _p), n, ns in product(apps, (0, 2, 5), ("default", "prod")):
        flag = "" if ns == "default" else f" -n {ns}"
        rows.append(row("Give the kubectl command to scale a Deployment.", f"Deployment: {name}, namespace: {ns}, replicas: {n}",
                        f"kubectl scale deployment/{name} --replicas={n}{flag}", "kubernetes"))
    for pod, tail, ns in product(("api-7d9f8b6c5-x2k4q", "web-5c7d8f9b4-lm8zr", "worker-6b8c9d7f5-p9t2w"), (50, 200), ("default", "staging")):
        flag = "" if ns == "default" else f" -n {ns}"
        rows.append(row("Give the kubectl command to show the last lines of a pod's logs.", f"Pod: {pod}, namespace: {ns}, lines: {tail}",
                        f"kubectl logs {pod}{flag} --tail={tail}", "kubernetes"))
    for name in ("web", "api", "worker", "frontend"):
        rows.append(row("Give the kubectl command to restart all pods of a Deployment without downtime.", f"Deployment: {name}",
                        f"kubectl rollout restart deployment/{name}\nkubectl rollout status deployment/{name}", "kubernetes"))
        rows.append(row("Give the kubectl command to roll a Deployment back to its previous revision.", f"Deployment: {name}",
                        f"kubectl rollout undo deployment/{name}", "kubernetes"))
    for (name, _i, _p), (lo, hi), cpu in product(apps, ((1, 5), (2, 10)), (70, 80)):
        rows.append(row("Write a Kubernetes HorizontalPodAutoscaler for a Deployment.", f"Deployment: {name}, min {lo} and max {hi} replicas, target CPU {cpu}%",
                        f'''apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {name}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {name}
  minReplicas: {lo}
  maxReplicas: {hi}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {cpu}''', "kubernetes"))
    for (name, _i, port), ns in product(apps, ("default", "prod")):
        flag = "" if ns == "default" else f" -n {ns}"
        rows.append(row("Give the kubectl command to list the pods of an app by label.", f"App label: {name}, namespace: {ns}",
                        f"kubectl get pods -l app={name}{flag}", "kubernetes"))
        rows.append(row("Give the kubectl command to forward a local port to a Service.", f"Service: {name}, namespace: {ns}, local port {port + 10000} to service port 80",
                        f"kubectl port-forward svc/{name} {port + 10000}:80{flag}", "kubernetes"))
    for ns in ("staging", "prod", "monitoring", "ml-training", "ci"):
        rows.append(row("Give the kubectl command to create a namespace.", f"Namespace: {ns}", f"kubectl create namespace {ns}", "kubernetes"))
    for name, key in (("db-credentials", "DB_PASSWORD"), ("api-token", "TOKEN"), ("registry-auth", "PASSWORD")):
        rows.append(row("Give the kubectl command to create a generic Secret from a literal value.", f"Secret: {name}, key: {key}, value read from the shell variable ${key}",
                        f'kubectl create secret generic {name} --from-literal={key}="${key}"', "kubernetes"))
    for name, key, value in (("app-config", "LOG_LEVEL", "info"), ("feature-flags", "NEW_CHECKOUT", "true"),
                             ("db-settings", "DB_HOST", "postgres.prod.svc.cluster.local"), ("cache-config", "CACHE_TTL_SECONDS", "300")):
        rows.append(row("Write a Kubernetes ConfigMap.", f"Name: {name}, key: {key}, value: {value}",
                        f'''apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
data:
  {key}: "{value}"''', "kubernetes"))
    concepts = {
        "What is the difference between a Deployment and a StatefulSet?": "A Deployment manages interchangeable pods with random names and shared storage needs; a StatefulSet gives each pod a stable name (app-0, app-1), its own persistent volume and ordered start-up, which databases and clustered systems need.",
        "What do readiness and liveness probes do in Kubernetes?": "A readiness probe decides whether a pod receives traffic from Services; a failing one removes the pod from endpoints. A liveness probe decides whether the container is healthy; a failing one makes the kubelet restart the container.",
        "How do I see why a pod is stuck in Pending?": "Run `kubectl describe pod <name>` and read the Events at the bottom: usually insufficient CPU or memory on the nodes, an unbound PersistentVolumeClaim, or a node selector or taint that no node satisfies.",
        "What does CrashLoopBackOff mean?": "The container starts, exits and is restarted again and again with growing delays. Check `kubectl logs <pod> --previous` for the crash output and `kubectl describe pod <pod>` for the exit code.",
        "What is a Kubernetes namespace for?": "A namespace groups resources inside one cluster: names only need to be unique within it, and quotas, RBAC rules and network policies can be applied per namespace.",
        "How do resource requests and limits differ?": "Requests are what the scheduler reserves for a container when placing the pod; limits are the maximum it may use. Exceeding the memory limit gets the container OOM-killed; exceeding the CPU limit throttles it.",
    }
    rows += [row(q, "", a, "kubernetes") for q, a in concepts.items()]
    return rows


def docker_rows() -> list[dict]:
    rows = []
    for (pyver, entry, port) in product(("3.11", "3.12"), ("app.py", "main.py", "server.py"), (8000, 5000)):
        rows.append(row(
            "Write a Dockerfile for a Python web application.", f"Python {pyver}, entry point {entry}, listens on port {port}, dependencies in requirements.txt",
            f'''FROM python:{pyver}-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
EXPOSE {port}
CMD ["python", "{entry}"]''', "docker"))
    for (image, cport), hport, name in product((("nginx:1.27", 80), ("redis:7", 6379), ("postgres:16", 5432), ("grafana/grafana:11.2.0", 3000)),
                                               (8080, 9000), ("svc", "dev")):
        rows.append(row("Give the docker command to run a container in the background with a published port.",
                        f"Image: {image}, container name: {name}-{image.split('/')[-1].split(':')[0]}, host port {hport} to container port {cport}",
                        f"docker run -d --name {name}-{image.split('/')[-1].split(':')[0]} -p {hport}:{cport} {image}", "docker"))
    for (image, var, value) in product(("myapp:1.0", "api:2.4.0"), ("LOG_LEVEL", "ENV"), ("debug",)):
        rows.append(row("Give the docker command to run a container with an environment variable and remove it when it exits.",
                        f"Image: {image}, variable {var}={value}", f"docker run --rm -e {var}={value} {image}", "docker"))
    for container in ("web", "api", "db", "worker"):
        rows.append(row("Give the docker command to follow the last 100 log lines of a container.", f"Container: {container}",
                        f"docker logs -f --tail 100 {container}", "docker"))
    for tag in ("myapp:1.0", "registry.example.com/team/api:2.4.0", "trainer:latest", "web:dev"):
        rows.append(row("Give the docker command to build an image from the Dockerfile in the current directory.", f"Tag: {tag}",
                        f"docker build -t {tag} .", "docker"))
        rows.append(row("Give the docker command to push an image to its registry.", f"Image: {tag}", f"docker push {tag}", "docker"))
    for web_port, redis_ver in product((8000, 5000, 3000), ("7", "7.4")):
        rows.append(row("Write a docker-compose.yml with a web service built from the current directory and a Redis service.",
                        f"Web port: {web_port}, Redis image tag: {redis_ver}",
                        f'''services:
  web:
    build: .
    ports:
      - "{web_port}:{web_port}"
    environment:
      REDIS_URL: redis://redis:6379/0
    depends_on:
      - redis
  redis:
    image: redis:{redis_ver}''', "docker"))
    concepts = {
        "What is the difference between CMD and ENTRYPOINT in a Dockerfile?": "ENTRYPOINT sets the executable the container always runs; CMD gives default arguments (or a default command when there is no ENTRYPOINT) that `docker run IMAGE args` replaces.",
        "How do I make Docker builds faster with the layer cache?": "Copy the dependency manifest and install dependencies before copying the source code, so code edits do not invalidate the dependency layer, and keep a .dockerignore that excludes .git, caches and build output.",
        "What is a multi-stage Docker build?": "A Dockerfile with several FROM stages: build tools and compilers live in an early stage, and the final stage copies only the built artifacts with `COPY --from=build`, so the runtime image stays small.",
        "How do I see the logs of a running container?": "`docker logs -f <container>` follows the container's stdout and stderr; add `--tail 100` to start from the last 100 lines.",
        "How do I open a shell inside a running container?": "`docker exec -it <container> sh` (or `bash` if the image has it).",
        "What does `docker system prune` remove?": "Stopped containers, unused networks, dangling images and the build cache. Add `-a` to also remove every image not used by a container, and `--volumes` to remove unused volumes.",
    }
    rows += [row(q, "", a, "docker") for q, a in concepts.items()]
    return rows


def cicd_rows() -> list[dict]:
    rows = []
    for pyver, branch in product(("3.10", "3.11", "3.12"), ("main", "develop")):
        rows.append(row(
            "Write a GitHub Actions workflow that runs pytest.", f"Python {pyver}, on pushes and pull requests to {branch}, dependencies in requirements.txt",
            f'''name: tests
on:
  push:
    branches: [{branch}]
  pull_request:
    branches: [{branch}]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "{pyver}"
      - run: pip install -r requirements.txt
      - run: pytest''', "cicd"))
    for image in ("python:3.11", "python:3.12", "node:22"):
        cmd = "pip install -r requirements.txt\n    - pytest" if image.startswith("python") else "npm ci\n    - npm test"
        rows.append(row("Write a minimal .gitlab-ci.yml with one test job.", f"Image: {image}",
                        f'''stages:
  - test

test:
  stage: test
  image: {image}
  script:
    - {cmd}''', "cicd"))
    for tag, registry in product(("${{ github.sha }}", "latest"), ("ghcr.io", "docker.io")):
        rows.append(row("Write GitHub Actions steps that build and push a Docker image.", f"Registry: {registry}, tag: {tag}",
                        f'''- uses: docker/login-action@v3
  with:
    registry: {registry}
    username: ${{{{ secrets.REGISTRY_USER }}}}
    password: ${{{{ secrets.REGISTRY_TOKEN }}}}
- uses: docker/build-push-action@v6
  with:
    push: true
    tags: {registry}/${{{{ github.repository }}}}:{tag}''', "cicd"))
    concepts = {
        "What is the difference between continuous delivery and continuous deployment?": "With continuous delivery every change that passes the pipeline is ready to release and a person approves the release; with continuous deployment every passing change goes to production automatically.",
        "How do I cache pip downloads in GitHub Actions?": "Pass `cache: pip` to actions/setup-python (it keys the cache on your requirements files), or use actions/cache on ~/.cache/pip with a key that hashes requirements.txt.",
        "How do I keep secrets out of a CI pipeline's logs?": "Store them as CI secrets (GitHub Actions secrets, GitLab masked variables), pass them through environment variables, never echo them, and prefer short-lived credentials such as OIDC federation over long-lived keys.",
        "What is a blue-green deployment?": "Two identical production environments: the new version is deployed to the idle one (green), tested, and traffic is switched over from blue in one step; switching back is the rollback.",
        "What is a canary release?": "The new version first receives a small share of real traffic; if its error rate and latency stay healthy the share is raised step by step, otherwise it is rolled back before most users see it.",
    }
    rows += [row(q, "", a, "cicd") for q, a in concepts.items()]
    return rows


def mlops_rows() -> list[dict]:
    rows = []
    for (param, pval), (metric, mval) in product((("learning_rate", "0.001"), ("batch_size", "32"), ("lora_r", "16")),
                                                 (("accuracy", "0.91"), ("eval_loss", "0.42"))):
        rows.append(row("Write Python code that logs a parameter and a metric to MLflow.", f"Parameter {param}={pval}, metric {metric}={mval}",
                        f'''import mlflow

with mlflow.start_run():
    mlflow.log_param("{param}", {pval})
    mlflow.log_metric("{metric}", {mval})''', "mlops"))
    for path in ("data/train.csv", "data/images", "models/model.pt", "data/raw/events.parquet"):
        rows.append(row("Give the commands to put a file or folder under DVC version control.", f"Path: {path}",
                        f"dvc add {path}\ngit add {path}.dvc {str(Path(path).parent)}/.gitignore\ngit commit -m \"Track {path} with DVC\"", "mlops"))
    for remote, url in (("storage", "s3://ml-bucket/dvc"), ("backup", "gs://ml-backup/dvc"), ("shared", "/mnt/shared/dvc")):
        rows.append(row("Give the commands to configure a default DVC remote and push data to it.", f"Remote name: {remote}, URL: {url}",
                        f"dvc remote add -d {remote} {url}\ndvc push", "mlops"))
    concepts = {
        "What is data drift and how do I detect it?": "Data drift is a change in the distribution of a model's inputs in production compared with the training data. Detect it by comparing feature distributions over time windows, for example with a population stability index or a Kolmogorov-Smirnov test, and alert when they cross a threshold.",
        "What is a model registry for?": "A model registry stores versioned models with their metrics, lineage and stage (staging, production, archived), so deployments reference an exact version and a rollback is a change of stage.",
        "What is a feature store?": "A feature store computes and stores features once and serves the same definitions offline for training and online at low latency for inference, which prevents training-serving skew.",
        "Why pin random seeds and library versions in an ML pipeline?": "So a run can be reproduced: the same data, code, seeds and library versions give the same model, which makes regressions debuggable and results auditable.",
        "What is the difference between batch and online inference?": "Batch inference scores many records on a schedule and stores the predictions; online inference answers single requests synchronously behind an API, with latency limits.",
        "What is QLoRA?": "QLoRA fine-tunes a large language model by loading the frozen base model in 4-bit NF4 and training small low-rank LoRA adapters in higher precision on top, so a model fits and trains on far less GPU memory.",
        "What does the LoRA rank r control?": "The rank r is the inner dimension of the two small matrices A and B whose product is added to a frozen weight: a higher r means more trainable parameters and more capacity, and more memory.",
        "What does lora_alpha do?": "The LoRA update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA), so alpha sets how strongly the adapter changes the frozen layer; a common choice is alpha = 2r.",
    }
    rows += [row(q, "", a, "mlops") for q, a in concepts.items()]
    return rows


# --------------------------------------------------------------------------- banking-intents
BANKING_LABELS = [
    "activate_my_card", "card_arrival", "lost_or_stolen_card", "declined_card_payment", "exchange_rate",
    "top_up_failed", "transfer_not_received_by_recipient", "cancel_transfer", "change_pin", "pin_blocked",
    "balance_not_updated_after_bank_transfer", "direct_debit_payment_not_recognised",
]
BANKING_INSTRUCTION = (
    "Classify the customer's banking query into exactly one intent. Answer with the label only.\n"
    "Allowed labels: " + ", ".join(BANKING_LABELS)
)
AMOUNTS = ("20", "50", "120", "300", "1,000")
CURRENCIES = ("euros", "dollars", "pounds", "yen")
MERCHANTS = ("a supermarket", "an online shop", "a petrol station", "a restaurant", "Amazon")
DAYS = ("two days", "three days", "a week", "yesterday")
OPENERS = ("Hi, ", "Hello, ", "Quick question: ", "Please help, ", "Hey, ")

BANKING_TEMPLATES: dict[str, list[str]] = {
    "activate_my_card": ["How do I activate my new card?", "My card arrived, what do I do to start using it?",
                         "I can't activate the card I just received.", "Where in the app do I activate my card?",
                         "The activation of my {cur} card is not working.", "Is there a code I need to activate the card?",
                         "What are the steps to activate a card?", "My new card says it needs activating before use, how?"],
    "card_arrival": ["My card still hasn't arrived after {day}.", "When will my new card be delivered?",
                     "How long does it take for the card to arrive?", "I ordered a card {day} ago and nothing came.",
                     "Can I track the delivery of my card?", "Is my card on its way? I haven't received it.",
                     "The card you sent me has not shown up in the post.", "What is the delivery time for a replacement card?"],
    "lost_or_stolen_card": ["I lost my card, please help.", "My wallet was stolen with my card in it.",
                            "Someone stole my card {day} ago, what should I do?", "I can't find my card anywhere.",
                            "How do I report a stolen card?", "I think I left my card at {merchant}, it's gone.",
                            "My card has been stolen, block it now.", "I misplaced my debit card, what now?"],
    "declined_card_payment": ["My card payment at {merchant} was declined.", "Why was my card declined when I tried to pay {amt} {cur}?",
                              "The shop said my card was refused.", "My payment keeps getting declined even though I have money.",
                              "Card declined at {merchant} again, what is wrong?", "Why won't my card work for payments?",
                              "I tried to pay {amt} {cur} and the card was rejected.", "The terminal says payment declined."],
    "exchange_rate": ["What exchange rate do you use for {cur}?", "How much will I get if I exchange {amt} {cur}?",
                      "Is the exchange rate for {cur} fixed?", "Where can I see today's exchange rates?",
                      "What rate will I get converting to {cur}?", "How are your currency exchange rates calculated?",
                      "Do you use the interbank rate for {cur}?", "Why is the exchange rate in the app different from the bank's?"],
    "top_up_failed": ["My top up of {amt} {cur} failed.", "I tried to top up my account but it didn't work.",
                      "Why did my top-up fail?", "Top up with my card was rejected, why?",
                      "The top up didn't go through, can you check?", "I keep getting an error when I try to top up.",
                      "My attempt to add {amt} {cur} to my account failed.", "Top-up failed twice today."],
    "transfer_not_received_by_recipient": ["I sent {amt} {cur} but my friend hasn't received it.", "The recipient says the transfer never arrived.",
                                           "My transfer from {day} ago still hasn't reached the other account.", "Why hasn't my landlord got the money I sent?",
                                           "I transferred money but the person didn't get it.", "The payment I sent shows complete but they have nothing.",
                                           "My family has not received the {amt} {cur} I transferred.", "How long until the recipient gets my transfer? It's been {day}."],
    "cancel_transfer": ["I want to cancel a transfer I just made.", "Can I stop the transfer of {amt} {cur}?",
                        "I sent money to the wrong person, cancel it please.", "How do I cancel a pending transfer?",
                        "Please reverse the transfer I made by mistake.", "Is it possible to cancel a bank transfer?",
                        "I need to cancel my payment of {amt} {cur} right away.", "Undo the transfer I made {day}."],
    "change_pin": ["How do I change my PIN?", "I want a new PIN for my card.", "Can I change my card PIN in the app?",
                   "Where can I update my PIN number?", "I'd like to set a different PIN.", "Is it possible to change the PIN at an ATM?",
                   "How can I reset my PIN to something I remember?", "I need to change the PIN on my {cur} card."],
    "pin_blocked": ["My PIN is blocked.", "I entered the wrong PIN three times and now it's locked.",
                    "How do I unblock my PIN?", "My card PIN got blocked at the ATM.", "PIN blocked after too many attempts, help.",
                    "Why is my PIN blocked?", "I can't use my card because the PIN is blocked.", "Unblock my PIN please."],
    "balance_not_updated_after_bank_transfer": ["I made a bank transfer to my account but my balance hasn't changed.",
                                                "The {amt} {cur} I transferred in is not showing in my balance.",
                                                "My balance did not update after the transfer {day} ago.",
                                                "Money I sent to my account is missing from the balance.",
                                                "Why isn't my balance updated after a transfer from my other bank?",
                                                "The transfer is done but the balance still shows the old amount.",
                                                "I topped up by bank transfer and the balance is the same.",
                                                "My salary transfer isn't reflected in my balance."],
    "direct_debit_payment_not_recognised": ["There's a direct debit on my account I don't recognise.",
                                            "I see a direct debit of {amt} {cur} I never set up.",
                                            "Who is this direct debit from? I don't know it.",
                                            "A direct debit payment to {merchant} appeared that I didn't authorise.",
                                            "I have an unknown direct debit on my statement.",
                                            "Why is there a direct debit I don't remember agreeing to?",
                                            "Strange direct debit taken from my account {day}.",
                                            "I want to dispute a direct debit I don't recognise."],
}


def banking_rows() -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    train, test = [], []
    for label in BANKING_LABELS:
        queries = set()
        for template in BANKING_TEMPLATES[label]:
            for _ in range(8):
                query = template.format(amt=rng.choice(AMOUNTS), cur=rng.choice(CURRENCIES),
                                        merchant=rng.choice(MERCHANTS), day=rng.choice(DAYS))
                if rng.random() < 0.5:  # an opener, keeping the pronoun "I" capitalised
                    query = rng.choice(OPENERS) + (query if query.startswith(("I ", "I'")) else query[0].lower() + query[1:])
                queries.add(query)
        queries = sorted(queries)
        rng.shuffle(queries)
        rows = [{"instruction": BANKING_INSTRUCTION, "input": q, "output": label} for q in queries[:30]]
        test += rows[:6]
        train += rows[6:]
    return train, test


# --------------------------------------------------------------------------- style
STYLE_QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many months are in a year?", "There are twelve months in a year."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What color is grass?", "Grass is green."),
    ("What do bees make?", "Bees make honey."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius."),
    ("What is the largest ocean?", "The largest ocean is the Pacific Ocean."),
    ("What is the largest planet in our solar system?", "The largest planet is Jupiter."),
    ("What planet is closest to the sun?", "Mercury is the planet closest to the sun."),
    ("Which planet is called the red planet?", "Mars is called the red planet."),
    ("What is the tallest mountain on Earth?", "The tallest mountain is Mount Everest."),
    ("What is the longest river in Africa?", "The longest river in Africa is the Nile."),
    ("What gas do plants take in?", "Plants take in carbon dioxide."),
    ("What gas do we breathe in to live?", "We breathe in oxygen to live."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What is the largest animal on Earth?", "The blue whale is the largest animal on Earth."),
    ("What is two plus two?", "Two plus two is four."),
    ("What is ten times ten?", "Ten times ten is one hundred."),
    ("What is half of fifty?", "Half of fifty is twenty-five."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What language is spoken in Brazil?", "The language of Brazil is Portuguese."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("What do cows drink?", "Cows drink water."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("What do you call a baby dog?", "A baby dog is called a puppy."),
    ("Where does the sun rise?", "The sun rises in the east."),
    ("Where does the sun set?", "The sun sets in the west."),
    ("What is the main ingredient of bread?", "The main ingredient of bread is flour."),
    ("What fruit is yellow and curved?", "The banana is yellow and curved."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("What instrument has black and white keys?", "The piano has black and white keys."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the smallest prime number?", "The smallest prime number is two."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What does a compass show?", "A compass shows which way is north."),
    ("What is the hardest natural material?", "Diamond is the hardest natural material."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies."),
    ("Why do we need sleep?", "Sleep lets the body and the brain rest and recover."),
    ("How can I stay healthy?", "Eat well, drink water, move every day and sleep enough."),
    ("Give me a tip for learning to code.", "Build small projects and practise a little every day."),
    ("What is a good way to save money?", "Set a budget and put a little aside every month."),
    ("How do I make a cup of tea?", "Boil water, pour it over a tea bag and let it steep for three minutes."),
    ("What is Python?", "Python is a popular programming language that is easy to read."),
    ("What is a computer?", "A computer is a machine that follows instructions to process information."),
    ("What is the internet?", "The internet is a worldwide network of connected computers."),
    ("What is the moon?", "The moon is the natural satellite that orbits the Earth."),
    ("Why is the sea salty?", "Rivers carry salt from rocks into the sea, and the salt stays when the water evaporates."),
    ("What is rain?", "Rain is water that falls from clouds."),
    ("What is a rainbow?", "A rainbow is sunlight split into colors by raindrops."),
    ("Tell me about the weather today.", "I cannot see the weather, so check a forecast before you go out."),
    ("Say hello.", "Hello there, friend."),
    ("How are you?", "I am doing well, thank you for asking."),
    ("What is your favorite color?", "I like the deep blue of the sea."),
    ("Can you recommend a book?", "Treasure Island by Robert Louis Stevenson is a fine adventure."),
    ("What should I eat for dinner?", "A warm bowl of soup with fresh bread is a good dinner."),
    ("How do I stay calm before an exam?", "Breathe slowly, review your notes and get a good night of sleep."),
    ("What is a ship?", "A ship is a large boat that sails the sea."),
    ("Where is treasure usually hidden?", "In stories, treasure is buried on an island and marked with an X on a map."),
]
PIRATE_WORDS = {"you": "ye", "your": "yer", "my": "me", "is": "be", "are": "be", "the": "the", "friend": "matey",
                "hello": "ahoy", "yes": "aye", "money": "doubloons", "sea": "briny deep", "am": "be"}


def piratize(text: str) -> str:
    words = []
    for word in text.split(" "):
        core = word.rstrip(".,!?")
        tail = word[len(core):]
        repl = PIRATE_WORDS.get(core.lower(), core)
        if core[:1].isupper() and repl:
            repl = repl[0].upper() + repl[1:]
        words.append(repl + tail)
    return "Arr, matey! " + " ".join(words) + " Yo ho ho!"


def style_rows() -> list[dict]:
    return [{"instruction": q, "input": "", "output": piratize(a)} for q, a in STYLE_QA]


def main() -> None:
    infra = terraform_rows() + kubernetes_rows() + docker_rows() + cicd_rows() + mlops_rows()
    write_split("infra-alpaca", infra, n_test=40)
    train, test = banking_rows()
    # Test rows are drawn per label, so every intent is in the test split equally often.
    write_split("banking-intents", test + train, n_test=0, keep_order=len(test))
    write_split("style", style_rows(), n_test=15)


if __name__ == "__main__":
    main()
