// The platform in one resource group per environment (staging, production):
//   az deployment group create -g <group> -f infra/azure/main.bicep -p infra/azure/params/<env>.bicepparam \
//     -p imageTag=<tag> apiRevisionSuffix=<suffix> apiStableRevision=<revision serving now>
// The registry is shared and deployed once (registry.bicep). Every RECSYS_* setting below is the one
// the README documents; secrets come from Key Vault through the apps' managed identity.

targetScope = 'resourceGroup'

@allowed(['staging', 'production'])
param environmentName string
param location string = resourceGroup().location
@maxLength(8)
param namePrefix string = 'recsys'
param tags object = {}

@description('The shared registry (registry.bicep) and its resource group.')
param registryName string
param registryResourceGroup string
@description('Tag of the four images in the registry, e.g. the commit.')
param imageTag string

// --- API: blue/green over Container Apps revisions ---
@description('Suffix of the revision this deployment creates (unique per deployment, e.g. the short commit).')
param apiRevisionSuffix string
@description('Revision serving now; empty on the first deployment (the new revision then takes all traffic).')
param apiStableRevision string = ''
@minValue(0)
@maxValue(100)
@description('Share of traffic for the new revision: 0 deploys it dark (reachable by its label), 100 switches.')
param apiNewRevisionWeight int = 100
@minValue(2)
param apiMinReplicas int = 2
param apiMaxReplicas int = 10
@description('Concurrent requests per replica before the HTTP rule adds one.')
param apiConcurrentRequests int = 50
param apiWorkers int = 2
param apiCpu string = '1.0'
param apiMemory string = '2Gi'
@secure()
@description('RECSYS_API_KEYS: `key:scope` pairs, comma-separated.')
param apiKeys string

// --- pipeline ---
@description('RECSYS_EVALUATION_TARGET of the pipeline and the API: what the champion is chosen on, and whether lists hide seen items by default.')
@allowed(['discovery', 'repeat', 'blended'])
param evaluationTarget string = 'discovery'
@description('RECSYS_SOURCE of the pipeline.')
@allowed(['movielens', 'event_log'])
param pipelineSource string = 'movielens'
@description('RECSYS_EVENT_LOG (JSON) when the source is event_log.')
param pipelineEventLog string = ''
@description('When the run-worker job materializes the whole graph (cron, UTC).')
param pipelineSchedule string = '0 3 * * *'
param pipelineCpu string = '4.0'
param pipelineMemory string = '8Gi'

// --- data services ---
param postgresAdminUser string = 'recsys'
@secure()
param postgresAdminPassword string
param postgresSkuName string = 'Standard_B1ms'
@allowed(['Burstable', 'GeneralPurpose', 'MemoryOptimized'])
param postgresSkuTier string = 'Burstable'
@allowed(['Disabled', 'ZoneRedundant', 'SameZone'])
param postgresHighAvailability string = 'Disabled'
@allowed(['Basic', 'Standard', 'Premium'])
param redisSku string = 'Basic'
param redisCapacity int = 0
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS'])
param storageSku string = 'Standard_LRS'

// --- training cluster ---
param trainingVmSize string = 'Standard_NC4as_T4_v3'
param trainingMaxNodes int = 2

// --- access and cost ---
@description('CIDR ranges allowed to the console and the Dagster UI; empty: both stay internal to the environment.')
param adminIpRanges array = []
@description('Monthly budget of the resource group, in the billing currency.')
param budgetAmount int
param budgetContactEmails array
@description('First day of the budget period (yyyy-MM-dd, a first of the month).')
param budgetStartDate string = '${utcNow('yyyy-MM')}-01'

var envShort = environmentName == 'production' ? 'prd' : 'stg'
var base = '${namePrefix}-${envShort}'
var unique = uniqueString(resourceGroup().id)
var allTags = union(tags, {
  application: 'recsys'
  environment: environmentName
})
var registryServer = '${registryName}.azurecr.io'
var images = {
  api: '${registryServer}/recsys-api:${imageTag}'
  console: '${registryServer}/recsys-console:${imageTag}'
  pipeline: '${registryServer}/recsys-pipeline:${imageTag}'
  dagster: '${registryServer}/recsys-dagster:${imageTag}'
}
var names = {
  api: '${base}-api'
  console: '${base}-console'
  code: '${base}-code'
  dagsterUi: '${base}-dagster-ui'
  dagsterDaemon: '${base}-dagster-daemon'
  mlflow: '${base}-mlflow'
  pipelineJob: '${base}-pipeline'
}
// ports of the images (infra/docker); tests/infra/test_infra.py checks they agree
var apiPort = 8000
var consolePort = 8501
var codePort = 4000
var dagsterPort = 3000
var mlflowPort = 5000
var eventsMount = '/var/lib/recsys/events'
var dagsterHome = '/opt/dagster/azure'

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    namePrefix: base
    location: location
    tags: allTags
  }
}

// The alert rules of infra/monitoring/alerts.yml on an Azure Monitor workspace; mail to the budget's contacts.
module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    namePrefix: base
    location: location
    tags: allTags
    alertEmails: budgetContactEmails
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: take('${namePrefix}${envShort}${unique}', 24)
    location: location
    tags: allTags
    sku: storageSku
  }
}

module redis 'modules/redis.bicep' = {
  name: 'redis'
  params: {
    name: '${base}-redis-${take(unique, 6)}'
    location: location
    tags: allTags
    skuName: redisSku
    capacity: redisCapacity
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  params: {
    name: '${base}-pg-${take(unique, 6)}'
    location: location
    tags: allTags
    adminUser: postgresAdminUser
    adminPassword: postgresAdminPassword
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    highAvailability: postgresHighAvailability
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: '${base}-kv-${take(unique, 6)}'
    location: location
    tags: allTags
    apiKeys: apiKeys
    postgresPassword: postgresAdminPassword
    postgresAdminUser: postgresAdminUser
    postgresHost: postgres.outputs.host
    redisName: redis.outputs.name
  }
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: '${base}-apps'
    location: location
    tags: allTags
    keyVaultName: keyVault.outputs.name
    storageAccountName: storage.outputs.name
  }
}

module acrPull 'modules/acr-pull.bicep' = {
  name: 'acr-pull-${envShort}'
  scope: resourceGroup(registryResourceGroup)
  params: {
    registryName: registryName
    principalId: identity.outputs.principalId
  }
}

module environment 'modules/environment.bicep' = {
  name: 'environment'
  params: {
    name: '${base}-env'
    location: location
    tags: allTags
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    storageAccountName: storage.outputs.name
    eventsShareName: storage.outputs.eventsShareName
  }
}

// --- settings, by role ------------------------------------------------------------------------

func kvSecret(vaultUri string, name string) object => {
  name: name
  keyVaultUrl: '${vaultUri}secrets/${name}'
}

var mlflowUri = 'http://${names.mlflow}'
// DefaultAzureCredential picks the user-assigned identity by its client id
var identityEnv = [
  {
    name: 'AZURE_CLIENT_ID'
    value: identity.outputs.clientId
  }
]
// every role's storage: Blob through the managed identity, no account key
var storageEnv = [
  {
    name: 'RECSYS_STORAGE_URI'
    value: 'abfs://recsys/data'
  }
  {
    name: 'RECSYS_AZURE_ACCOUNT_URL'
    value: storage.outputs.blobEndpoint
  }
]
var dagsterInstanceEnv = [
  {
    name: 'DAGSTER_HOME'
    value: dagsterHome
  }
  {
    name: 'DAGSTER_PG_HOST'
    value: postgres.outputs.host
  }
  {
    name: 'DAGSTER_PG_PORT'
    value: '5432'
  }
  {
    name: 'DAGSTER_PG_DB'
    value: 'dagster'
  }
  {
    name: 'DAGSTER_PG_USER'
    value: postgresAdminUser
  }
  {
    name: 'DAGSTER_PG_PASSWORD'
    secretRef: 'dagster-pg-password'
  }
  {
    name: 'DAGSTER_COMPUTE_LOG_ACCOUNT'
    value: storage.outputs.name
  }
]
var apiEnv = concat(identityEnv, storageEnv, [
  {
    name: 'RECSYS_REDIS_URL'
    secretRef: 'redis-url'
  }
  {
    name: 'RECSYS_API_KEYS'
    secretRef: 'api-keys'
  }
  {
    name: 'RECSYS_API_WORKERS'
    value: string(apiWorkers)
  }
  {
    name: 'RECSYS_EVALUATION_TARGET'
    value: evaluationTarget
  }
  {
    name: 'RECSYS_EVENTS_DIR'
    value: eventsMount
  }
  {
    // the `champion` alias is read from the registry each poll: a move in the MLflow UI is served
    name: 'RECSYS_REGISTRY_URL'
    value: mlflowUri
  }
])
var consoleEnv = concat(identityEnv, storageEnv, [
  {
    name: 'RECSYS_API_URL'
    value: 'http://${names.api}'
  }
  {
    name: 'RECSYS_MLFLOW_TRACKING_URI'
    value: mlflowUri
  }
  {
    name: 'RECSYS_EVENTS_DIR'
    value: eventsMount
  }
])
var pipelineEnv = concat(identityEnv, storageEnv, dagsterInstanceEnv, [
  {
    name: 'RECSYS_DAGSTER_HOME'
    value: dagsterHome
  }
  {
    name: 'RECSYS_MLFLOW_TRACKING_URI'
    value: mlflowUri
  }
  {
    name: 'RECSYS_SOURCE'
    value: pipelineSource
  }
  {
    // the report's p95 latency and availability come from the API's /metrics
    name: 'RECSYS_API_URL'
    value: 'http://${names.api}'
  }
  {
    name: 'RECSYS_EVALUATION_TARGET'
    value: evaluationTarget
  }
  {
    name: 'RECSYS_EVENTS_DIR'
    value: eventsMount
  }
], empty(pipelineEventLog) ? [] : [
  {
    name: 'RECSYS_EVENT_LOG'
    value: pipelineEventLog
  }
])
var dagsterEnv = concat(identityEnv, dagsterInstanceEnv, [
  {
    name: 'DAGSTER_CODE_LOCATION_HOST'
    value: names.code
  }
  // through the environment's ingress (HTTP/2, plain text inside the environment)
  {
    name: 'DAGSTER_CODE_LOCATION_PORT'
    value: '80'
  }
])
var mlflowEnv = concat(identityEnv, [
  {
    name: 'MLFLOW_BACKEND_STORE_URI'
    secretRef: 'mlflow-backend-uri'
  }
  {
    name: 'MLFLOW_ARTIFACTS_DESTINATION'
    value: 'wasbs://mlflow@${storage.outputs.name}.blob.core.windows.net/artifacts'
  }
  // the Host headers of the other apps' requests (http://<name>) and of the internal FQDN
  {
    name: 'MLFLOW_SERVER_ALLOWED_HOSTS'
    value: '${names.mlflow},${names.mlflow}.*,localhost:*'
  }
  {
    name: 'MLFLOW_SERVER_ENABLE_JOB_EXECUTION'
    value: 'false'
  }
])
var eventsReadWrite = [
  {
    name: 'events'
    storageName: environment.outputs.eventsReadWrite
    mountPath: eventsMount
  }
]
var eventsReadOnly = [
  {
    name: 'events'
    storageName: environment.outputs.eventsReadOnly
    mountPath: eventsMount
  }
]

// --- the apps ---------------------------------------------------------------------------------

var apiNewRevision = '${names.api}--${apiRevisionSuffix}'
// blue/green: the serving revision keeps the rest; each side has a label (https://<app>---<label>.<domain>)
var apiTraffic = (empty(apiStableRevision) || apiStableRevision == apiNewRevision) ? [
  {
    revisionName: apiNewRevision
    weight: 100
    label: 'candidate'
  }
] : [
  {
    revisionName: apiStableRevision
    weight: 100 - apiNewRevisionWeight
    label: 'stable'
  }
  {
    revisionName: apiNewRevision
    weight: apiNewRevisionWeight
    label: 'candidate'
  }
]

module api 'modules/containerapp.bicep' = {
  name: 'app-api'
  dependsOn: [
    acrPull
  ]
  params: {
    name: names.api
    location: location
    tags: allTags
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registryServer
    image: images.api
    env: apiEnv
    keyVaultSecrets: [
      kvSecret(keyVault.outputs.uri, 'redis-url')
      kvSecret(keyVault.outputs.uri, 'api-keys')
    ]
    targetPort: apiPort
    external: true
    probes: [
      {
        type: 'Liveness'
        httpGet: {
          path: '/health'
          port: apiPort
        }
        periodSeconds: 10
        failureThreshold: 3
      }
      {
        // 503 until a champion artifact is loaded: no traffic before
        type: 'Readiness'
        httpGet: {
          path: '/ready'
          port: apiPort
        }
        periodSeconds: 5
        failureThreshold: 3
      }
      {
        type: 'Startup'
        httpGet: {
          path: '/health'
          port: apiPort
        }
        periodSeconds: 5
        failureThreshold: 24
      }
    ]
    cpu: apiCpu
    memory: apiMemory
    minReplicas: apiMinReplicas
    maxReplicas: apiMaxReplicas
    scaleRules: [
      {
        name: 'http-concurrency'
        http: {
          metadata: {
            concurrentRequests: string(apiConcurrentRequests)
          }
        }
      }
    ]
    revisionsMode: 'Multiple'
    revisionSuffix: apiRevisionSuffix
    traffic: apiTraffic
    fileVolumes: eventsReadWrite
  }
}

module console 'modules/containerapp.bicep' = {
  name: 'app-console'
  dependsOn: [
    acrPull
  ]
  params: {
    name: names.console
    location: location
    tags: allTags
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registryServer
    image: images.console
    env: consoleEnv
    targetPort: consolePort
    // an operators' tool without sign-in of its own: reachable from adminIpRanges only
    external: !empty(adminIpRanges)
    allowedIpRanges: adminIpRanges
    probes: [
      {
        type: 'Liveness'
        httpGet: {
          path: '/_stcore/health'
          port: consolePort
        }
        periodSeconds: 15
      }
      {
        type: 'Readiness'
        httpGet: {
          path: '/_stcore/health'
          port: consolePort
        }
        periodSeconds: 10
      }
    ]
    cpu: '0.5'
    memory: '1Gi'
    fileVolumes: eventsReadOnly
  }
}

module mlflow 'modules/containerapp.bicep' = {
  name: 'app-mlflow'
  dependsOn: [
    acrPull
  ]
  params: {
    name: names.mlflow
    location: location
    tags: allTags
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registryServer
    // the pipeline image has the MLflow server and the Postgres driver
    image: images.pipeline
    command: ['mlflow', 'server', '--host', '0.0.0.0', '--port', string(mlflowPort), '--serve-artifacts']
    env: mlflowEnv
    keyVaultSecrets: [
      kvSecret(keyVault.outputs.uri, 'mlflow-backend-uri')
    ]
    targetPort: mlflowPort
    external: false
    allowInsecure: true
    probes: [
      {
        type: 'Liveness'
        httpGet: {
          path: '/health'
          port: mlflowPort
        }
        initialDelaySeconds: 30
        periodSeconds: 15
      }
    ]
    cpu: '1.0'
    memory: '2Gi'
  }
}

module codeLocation 'modules/containerapp.bicep' = {
  name: 'app-code-location'
  dependsOn: [
    acrPull
  ]
  params: {
    name: names.code
    location: location
    tags: allTags
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registryServer
    image: images.pipeline
    env: pipelineEnv
    keyVaultSecrets: [
      kvSecret(keyVault.outputs.uri, 'dagster-pg-password')
    ]
    // gRPC: HTTP/2 ingress inside the environment only
    targetPort: codePort
    external: false
    transport: 'http2'
    allowInsecure: true
    probes: [
      {
        type: 'Liveness'
        tcpSocket: {
          port: codePort
        }
        initialDelaySeconds: 60
        periodSeconds: 30
      }
    ]
    // runs launched from the UI are subprocesses of this server: it is sized for training
    cpu: pipelineCpu
    memory: pipelineMemory
    fileVolumes: eventsReadOnly
  }
}

module dagsterUi 'modules/containerapp.bicep' = {
  name: 'app-dagster-ui'
  dependsOn: [
    acrPull
  ]
  params: {
    name: names.dagsterUi
    location: location
    tags: allTags
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registryServer
    image: images.dagster
    env: dagsterEnv
    keyVaultSecrets: [
      kvSecret(keyVault.outputs.uri, 'dagster-pg-password')
    ]
    targetPort: dagsterPort
    external: !empty(adminIpRanges)
    allowedIpRanges: adminIpRanges
    probes: [
      {
        type: 'Liveness'
        httpGet: {
          path: '/server_info'
          port: dagsterPort
        }
        initialDelaySeconds: 30
        periodSeconds: 15
      }
    ]
    cpu: '0.5'
    memory: '1Gi'
  }
}

module dagsterDaemon 'modules/containerapp.bicep' = {
  name: 'app-dagster-daemon'
  dependsOn: [
    acrPull
  ]
  params: {
    name: names.dagsterDaemon
    location: location
    tags: allTags
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registryServer
    image: images.dagster
    command: ['dagster-daemon', 'run', '--workspace', '/opt/dagster/workspace.yaml']
    env: dagsterEnv
    keyVaultSecrets: [
      kvSecret(keyVault.outputs.uri, 'dagster-pg-password')
    ]
    cpu: '0.5'
    memory: '1Gi'
  }
}

module pipelineJob 'modules/job.bicep' = {
  name: 'job-pipeline'
  dependsOn: [
    acrPull
  ]
  params: {
    name: names.pipelineJob
    location: location
    tags: allTags
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registryServer
    image: images.pipeline
    command: ['python', '-m', 'recsys_assets', 'pipeline']
    env: pipelineEnv
    keyVaultSecrets: [
      kvSecret(keyVault.outputs.uri, 'dagster-pg-password')
    ]
    cronExpression: pipelineSchedule
    cpu: pipelineCpu
    memory: pipelineMemory
    fileVolumes: eventsReadOnly
  }
}

module ml 'modules/ml.bicep' = {
  name: 'ml'
  params: {
    name: '${base}-ml'
    location: location
    tags: allTags
    storageAccountId: storage.outputs.id
    keyVaultId: keyVault.outputs.id
    insightsId: monitoring.outputs.insightsId
    vmSize: trainingVmSize
    maxNodes: trainingMaxNodes
  }
}

module budget 'modules/budget.bicep' = {
  name: 'budget'
  params: {
    name: '${base}-monthly'
    amount: budgetAmount
    startDate: budgetStartDate
    contactEmails: budgetContactEmails
  }
}

output apiName string = api.outputs.name
output apiFqdn string = api.outputs.fqdn
output apiNewRevision string = apiNewRevision
output consoleFqdn string = console.outputs.fqdn
output environmentDomain string = environment.outputs.defaultDomain
output pipelineJobName string = pipelineJob.outputs.name
