// Staging: smallest tiers, the API's minimum of two replicas, a low budget.
// CI passes imageTag, apiRevisionSuffix and apiStableRevision with -p (.github/workflows/deploy.yml);
// secrets come from the environment of the deploying job.
using '../main.bicep'

param environmentName = 'staging'
param registryName = readEnvironmentVariable('RECSYS_REGISTRY_NAME', 'recsysregistry')
param registryResourceGroup = readEnvironmentVariable('RECSYS_REGISTRY_RESOURCE_GROUP', 'recsys-shared')
param imageTag = readEnvironmentVariable('RECSYS_IMAGE_TAG', 'latest')
param apiRevisionSuffix = readEnvironmentVariable('RECSYS_API_REVISION_SUFFIX', 'manual')
// blue/green: the revision serving now and the new revision's share (deploy.yml sets both)
param apiStableRevision = readEnvironmentVariable('RECSYS_API_STABLE_REVISION', '')
param apiNewRevisionWeight = int(readEnvironmentVariable('RECSYS_API_NEW_REVISION_WEIGHT', '100'))
param adminIpRanges = json(readEnvironmentVariable('RECSYS_ADMIN_IP_RANGES', '[]'))

param apiMinReplicas = 2
param apiMaxReplicas = 4
param apiConcurrentRequests = 50
param apiWorkers = 2
param apiKeys = readEnvironmentVariable('RECSYS_API_KEYS')

param pipelineSchedule = '0 3 * * *'
param pipelineCpu = '2.0'
param pipelineMemory = '4Gi'

param postgresAdminPassword = readEnvironmentVariable('RECSYS_POSTGRES_ADMIN_PASSWORD')
param postgresSkuName = 'Standard_B1ms'
param postgresSkuTier = 'Burstable'
param redisSku = 'Basic'
param redisCapacity = 0
param storageSku = 'Standard_LRS'

param trainingVmSize = 'Standard_NC4as_T4_v3'
param trainingMaxNodes = 1

param budgetAmount = 300
param budgetContactEmails = ['recsys-ops@example.com']
