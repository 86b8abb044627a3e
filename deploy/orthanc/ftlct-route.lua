-- ftl-ct: route every stable CT series of a study to the ftl-ct agent (Orthanc Lua).
--
-- Loaded through "LuaScripts" (see ftlct.json beside this file). When a study has
-- had no new instance for "StableAge" seconds, each of its CT series is sent by
-- C-STORE to the DICOM modality named "FtlctAgentModality" (default "ftlct").
-- Only CT: the agent's own SR results come back into the same study and must not
-- be routed to it again. A series is sent again only when it gained instances
-- since it was last sent (the user metadata "FtlctRoutedInstances" keeps the count),
-- so a study that becomes stable again after the SR arrives is not re-sent. The send
-- is synchronous (the script waits for the agent's C-STORE answers); a failed send
-- is logged and leaves the count unset: the study's next stable event, or
--   curl -X POST http://localhost:8042/modalities/ftlct/store -d '"SERIES_ID"'
-- sends it again.

local config = GetOrthancConfiguration()
local AGENT = config['FtlctAgentModality'] or 'ftlct'
local ROUTED = 'FtlctRoutedInstances'

local function routedCount(seriesId)
  local names = ParseJson(RestApiGet('/series/' .. seriesId .. '/metadata'))
  for _, name in ipairs(names) do
    if name == ROUTED then
      return RestApiGet('/series/' .. seriesId .. '/metadata/' .. ROUTED)
    end
  end
  return nil
end

-- C-STORE the series and wait for the answer: Lua's SendToModality() only queues the
-- instances, so it could not tell whether the agent took them.
local function sendSeries(seriesId)
  local body = DumpJson({ Resources = { seriesId }, Synchronous = true }, true)
  local ok, answer = pcall(RestApiPost, '/modalities/' .. AGENT .. '/store', body)
  return ok and answer ~= nil
end

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in ipairs(series) do
    local modality = s['MainDicomTags']['Modality']
    local count = tostring(#s['Instances'])
    if modality == 'CT' then
      if routedCount(s['ID']) == count then
        print('ftlct: series ' .. s['ID'] .. ' already routed to ' .. AGENT .. ' (' .. count .. ' instances)')
      elseif sendSeries(s['ID']) then
        RestApiPut('/series/' .. s['ID'] .. '/metadata/' .. ROUTED, count)
        print('ftlct: routed series ' .. s['ID'] .. ' (' .. count .. ' instances) to ' .. AGENT)
      else
        print('ftlct: FAILED to route series ' .. s['ID'] .. ' to ' .. AGENT .. ' (see the error above)')
      end
    end
  end
end
