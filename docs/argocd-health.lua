-- Argo CD custom health check for kmeanspartition.dev/KMeansPartition.
-- Healthy on phase Succeeded, Degraded on Failed, Progressing otherwise
-- (including a spec change the operator has not observed yet).
-- The message comes from the deciding condition (Succeeded/Failed/Running/...).
local hs = { status = "Progressing", message = "Waiting for the operator" }

local function find_condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == wanted and condition.status == "True" then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition == nil then
    return fallback
  end
  local text = condition.reason or condition.type
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

if obj.status == nil then
  return hs
end

local status = obj.status
local conditions = status.conditions
local generation = obj.metadata and obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local failed = find_condition(conditions, "Failed")
local succeeded = find_condition(conditions, "Succeeded")
if status.phase == "Failed" or failed ~= nil then
  hs.status = "Degraded"
  hs.message = describe(failed, "Failed")
elseif status.phase == "Succeeded" or succeeded ~= nil then
  hs.status = "Healthy"
  hs.message = describe(succeeded, "Succeeded")
else
  local running = find_condition(conditions, "Running")
  local cluster_ready = find_condition(conditions, "DaskClusterReady")
  if running ~= nil then
    hs.message = describe(running, "Running")
  elseif cluster_ready ~= nil then
    hs.message = describe(cluster_ready, "Dask cluster ready")
  elseif status.phase ~= nil then
    hs.message = status.phase
  end
  local progress = status.progress
  if progress ~= nil and progress.iteration ~= nil then
    local of = ""
    if progress.maxIter ~= nil then
      of = "/" .. tostring(progress.maxIter)
    end
    hs.message = hs.message .. " (iteration " .. tostring(progress.iteration) .. of .. ")"
  end
end
return hs
