// Production: zone-redundant storage, Standard Redis (replicated), General Purpose Postgres with
// zone-redundant high availability, more API replicas, a training cluster of up to four GPU nodes.
using '../main.bicep'

param environmentName = 'production'
param registryName = readEnvironmentVariable('RECSYS_REGISTRY_NAME', 'recsysregistry')
param registryResourceGroup = readEnvironmentVariable('RECSYS_REGISTRY_RESOURCE_GROUP', 'recsys-shared')
param imageTag = readEnvironmentVariable('RECSYS_IMAGE_TAG', 'latest')
param apiRevisionSuffix = readEnvironmentVariable('RECSYS_API_REVISION_SUFFIX', 'manual')
// blue/green: the revision serving now and the new revision's share (deploy.yml sets both)
param apiStableRevision = readEnvironmentVariable('RECSYS_API_STABLE_REVISION', '')
param apiNewRevisionWeight = int(readEnvironmentVariable('RECSYS_API_NEW_REVISION_WEIGHT', '100'))
param adminIpRanges = json(readEnvironmentVariable('RECSYS_ADMIN_IP_RANGES', '[]'))

param apiMinReplicas = 3
param apiMaxReplicas = 20
param apiConcurrentRequests = 50
param apiWorkers = 2
param apiCpu = '2.0'
param apiMemory = '4Gi'
param apiKeys = readEnvironmentVariable('RECSYS_API_KEYS')

param pipelineSchedule = '0 2 * * *'
param pipelineCpu = '4.0'
param pipelineMemory = '8Gi'

param postgresAdminPassword = readEnvironmentVariable('RECSYS_POSTGRES_ADMIN_PASSWORD')
param postgresSkuName = 'Standard_D2ds_v5'
param postgresSkuTier = 'GeneralPurpose'
param postgresHighAvailability = 'ZoneRedundant'
param redisSku = 'Standard'
param redisCapacity = 1
param storageSku = 'Standard_ZRS'

param trainingVmSize = 'Standard_NC4as_T4_v3'
param trainingMaxNodes = 4

param budgetAmount = 2000
param budgetContactEmails = ['recsys-ops@example.com']
