"""Submitting a checked job spec to an Azure ML workspace (``MLClient`` with
``DefaultAzureCredential``); the workspace and the credential fail in one
sentence before anything is uploaded."""

from __future__ import annotations

import json
from pathlib import Path

from pbtflow.azureml.sizing import _fail
from pbtflow.azureml.specs import _INSTALL_HINT, _azure_ml, _first_line, _quiet_azure, validate_job_file
from pbtflow.experiment import AzureMLError


def _workspace(workspace_config: str | None, subscription: str | None, resource_group: str | None,
               workspace: str | None) -> dict[str, str]:
    """Which workspace to submit to; fails offline, naming what is missing."""
    names = {"--subscription": subscription, "--resource-group": resource_group,
             "--workspace": workspace}
    given = [k for k, v in names.items() if v]
    if workspace_config and given:
        _fail("workspace", f"give the workspace once, but got --workspace-config and {', '.join(given)}; "
              "keep one of them")
    if workspace_config:
        config = Path(workspace_config)
        if not config.is_file():
            _fail("workspace_config", f"no such file {workspace_config!r}; download config.json from "
                  "the workspace's page in the Azure portal and pass its path")
        try:
            data = json.loads(config.read_text())
        except json.JSONDecodeError as exc:
            _fail("workspace_config", f"{workspace_config!r} is not valid JSON ({exc.msg}); download "
                  "config.json again from the Azure portal")
        keys = ("subscription_id", "resource_group", "workspace_name")
        missing = [k for k in keys if not (isinstance(data, dict) and data.get(k))]
        if missing:
            _fail("workspace_config", f"{workspace_config!r} must name {', '.join(keys)}, but lacks "
                  f"{', '.join(missing)}; download config.json again from the Azure portal")
        return {"subscription_id": data["subscription_id"],
                "resource_group_name": data["resource_group"],
                "workspace_name": data["workspace_name"]}
    missing = [k for k, v in names.items() if not v]
    if missing:
        _fail("workspace", f"submitting needs an Azure ML workspace, but got no "
              f"{', '.join(missing)}; pass --workspace-config PATH (config.json from the Azure portal) "
              "or all of --subscription, --resource-group and --workspace")
    return {"subscription_id": subscription, "resource_group_name": resource_group,
            "workspace_name": workspace}


def submit_job(path: str | Path, *, workspace_config: str | None = None,
               subscription: str | None = None, resource_group: str | None = None,
               workspace: str | None = None) -> str:
    """Validate and submit a job spec with ``MLClient`` and ``DefaultAzureCredential``;
    return the job's studio URL. Workspace and spec are checked before any
    client is built; a missing credential fails before anything is uploaded."""
    target = _workspace(workspace_config, subscription, resource_group, workspace)
    job = validate_job_file(path)
    try:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise AzureMLError(f"azure: azure-identity is not installed; {_INSTALL_HINT}.") from None
    try:
        with _quiet_azure():
            credential = DefaultAzureCredential()
            credential.get_token("https://management.azure.com/.default")
    except ClientAuthenticationError as exc:
        raise AzureMLError(f"credentials: no Azure credential could sign in "
                           f"({_first_line(exc).split('.')[0]}); run `az login`, or set "
                           "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET.") from None
    client = _azure_ml().MLClient(credential=credential, **target)
    created = client.jobs.create_or_update(job)
    return created.studio_url or ""
