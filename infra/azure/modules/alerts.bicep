// The alert rules of infra/monitoring/alerts.yml as an Azure Monitor Prometheus rule group, same names,
// expressions and durations (tests/infra/test_alerts.py keeps the two equal), evaluated on an Azure Monitor
// workspace that the API's /metrics are scraped into, and mailed through an action group.
// Scraping Container Apps into the workspace needs a collector (an OpenTelemetry collector or a Prometheus
// agent with remote write to `metricsIngestionEndpoint`): not part of these templates, see infra/README.md.

param namePrefix string
param location string
param tags object
@description('Who is mailed when an alert fires (the on-call rota); empty: the rules fire without mail.')
param alertEmails array = []
@description('Interval at which the rule group is evaluated (ISO 8601).')
param evaluationInterval string = 'PT1M'

resource workspace 'Microsoft.Monitor/accounts@2023-04-03' = {
  name: '${namePrefix}-metrics'
  location: location
  tags: tags
}

resource oncall 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-oncall'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'recsys'
    enabled: true
    emailReceivers: [for (email, i) in alertEmails: {
      name: 'oncall-${i}'
      emailAddress: email
      useCommonAlertSchema: true
    }]
  }
}

var actions = [
  {
    actionGroupId: oncall.id
  }
]

resource rules 'Microsoft.AlertsManagement/prometheusRuleGroups@2023-03-01' = {
  name: '${namePrefix}-alerts'
  location: location
  tags: tags
  properties: {
    description: 'recsys: API latency, 5xx rate, readiness, drift, retrains, pipeline success, champion age'
    enabled: true
    scopes: [
      workspace.id
    ]
    interval: evaluationInterval
    rules: [
      {
        alert: 'RecsysApiLatencyP95High'
        expression: 'histogram_quantile(0.95, sum by (le) (rate(recsys_api_request_duration_seconds_bucket{path!~"/metrics|/health|/ready"}[5m]))) > 0.1'
        for: 'PT10M'
        severity: 2
        labels: {
          severity: 'warning'
          group: 'recsys-api'
        }
        annotations: {
          summary: 'API p95 latency above 100 ms for 10 minutes (target < 100 ms)'
        }
        actions: actions
      }
      {
        alert: 'RecsysApi5xxRateHigh'
        expression: 'sum(rate(recsys_api_request_duration_seconds_count{status_code=~"5.."}[5m])) / sum(rate(recsys_api_request_duration_seconds_count[5m])) > 0.001'
        for: 'PT5M'
        severity: 1
        labels: {
          severity: 'critical'
          group: 'recsys-api'
        }
        annotations: {
          summary: 'More than 0.1% of API requests answered 5xx for 5 minutes (the 99.9% availability target)'
        }
        actions: actions
      }
      {
        alert: 'RecsysApiNotReady'
        expression: 'min(recsys_ready) < 1'
        for: 'PT2M'
        severity: 1
        labels: {
          severity: 'critical'
          group: 'recsys-api'
        }
        annotations: {
          summary: 'An API worker has no champion loaded (/ready answers 503) for 2 minutes'
        }
        actions: actions
      }
      {
        alert: 'RecsysApiDown'
        expression: 'up{job="recsys-api"} == 0'
        for: 'PT2M'
        severity: 1
        labels: {
          severity: 'critical'
          group: 'recsys-api'
        }
        annotations: {
          summary: 'Prometheus cannot scrape the API for 2 minutes'
        }
        actions: actions
      }
      {
        alert: 'RecsysDriftFlagged'
        expression: 'max(recsys_drift_flagged) == 1'
        for: 'PT0M'
        severity: 2
        labels: {
          severity: 'warning'
          group: 'recsys-pipeline'
        }
        annotations: {
          summary: 'The drift report of the latest live window asked for a retrain'
        }
        actions: actions
      }
      {
        alert: 'RecsysRetrainFailed'
        expression: 'max(recsys_retrain_last_outcome{outcome="failed"}) == 1'
        for: 'PT0M'
        severity: 1
        labels: {
          severity: 'critical'
          group: 'recsys-pipeline'
        }
        annotations: {
          summary: 'The latest retrain run failed; the champion was not replaced'
        }
        actions: actions
      }
      {
        alert: 'RecsysRetrainRefused'
        expression: 'max(recsys_retrain_last_outcome{outcome="refused"}) == 1'
        for: 'PT0M'
        severity: 2
        labels: {
          severity: 'warning'
          group: 'recsys-pipeline'
        }
        annotations: {
          summary: 'The challenger of the latest retrain did not pass the promotion check'
        }
        actions: actions
      }
      {
        alert: 'RecsysPipelineSuccessLow'
        expression: 'min(recsys_pipeline_success_ratio_7d) < 0.95'
        for: 'PT15M'
        severity: 2
        labels: {
          severity: 'warning'
          group: 'recsys-pipeline'
        }
        annotations: {
          summary: 'Fewer than 95% of the pipeline runs of the last 7 days succeeded'
        }
        actions: actions
      }
      {
        alert: 'RecsysChampionStale'
        expression: 'time() - min(recsys_champion_created_timestamp_seconds) > 14 * 86400'
        for: 'PT1H'
        severity: 2
        labels: {
          severity: 'warning'
          group: 'recsys-pipeline'
        }
        annotations: {
          summary: 'The served champion was built more than 14 days ago (two missed weekly retrains)'
        }
        actions: actions
      }
    ]
  }
}

output metricsWorkspaceId string = workspace.id
output metricsQueryEndpoint string = workspace.properties.metrics.prometheusQueryEndpoint
output actionGroupId string = oncall.id
